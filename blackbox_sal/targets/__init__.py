"""What a per-token model's prediction is explained as: positions and labels (:mod:`.per_token`)."""
