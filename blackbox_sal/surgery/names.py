"""Names of the tensors blackbox-sal reads, writes and adds to graphs."""

from __future__ import annotations

#: the float input every explained body takes: token embeddings [batch, seq, dim]
EMBEDS = "inputs_embeds"
IDS = "input_ids"
MASK = "attention_mask"
TYPES = "token_type_ids"
POSITIONS = "position_ids"
#: inputs filled automatically, by name; any other required input is an error at load time
KNOWN_INPUTS = (EMBEDS, IDS, MASK, TYPES, POSITIONS)
#: the roles a model folder's config.json "inputs" may name, role -> input name (surgery.roles;
#: padding_mask: a mask that is 1 on the padding)
INPUT_ROLES = ("ids", "mask", "padding_mask", "token_types", "positions", "lengths")
#: the output a causal LM is explained through: its logits at the last position [batch, vocab]
NEXT_TOKEN = "next_token_logits"
#: how token states can be pooled into one sentence embedding (surgery.pooling)
POOLINGS = ("mean", "cls", "max")

# the gradient graph's interface
#: seed weights over the explained output [batch, classes]
WEIGHTS = "target_weights"
#: d(sum_c weights[b, c] output[b, c]) / d inputs_embeds[b]: [batch, seq, dim]
GRAD = "grad"
# the path form of a gradient graph (surgery.path): points are built inside the graph
ANCHOR = "path_anchor"  # [requests, seq, dim]
DELTA = "path_delta"  # [requests, seq, dim]
ROW = "path_row"  # [batch] int64: which request each row belongs to
ALPHA = "path_alpha"  # [batch] float
TOKEN_JVP = "token_jvp"  # [batch, seq]: per-token derivative along the delta's rows
# the fan form (surgery.fan): the forward on P points, the backward on R seed rows
FAN_ROWS = "fan_rows"  # [seeds] int64: each seed row's point, 0..P-1
#: metadata of a graph built with an LRP rule set: its name, and the note naming the operators
#: that kept their plain gradient ("" when none did)
RULES_KEY, RULES_NOTE_KEY = "bbs_rules", "bbs_rules_note"
