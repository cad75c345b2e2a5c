# The package root's loose modules grouped by layer (issue 20, item 3): old module path -> new.
# Apply to any file written against the old layout:  sed -i -f regroup.sed FILE...
# (GNU sed; word boundaries keep blackbox_sal.batch apart from blackbox_sal.batch_ray.)
s/\bblackbox_sal\.config\b/blackbox_sal.vocabulary.config/g
s/\bblackbox_sal\.result\b/blackbox_sal.vocabulary.result/g
s/\bblackbox_sal\.errors\b/blackbox_sal.vocabulary.errors/g
s/\bblackbox_sal\.runs\b/blackbox_sal.vocabulary.runs/g
s/\bblackbox_sal\.scores\b/blackbox_sal.vocabulary.scores/g
s/\bblackbox_sal\.differences\b/blackbox_sal.vocabulary.differences/g
s/\bblackbox_sal\.batch\b/blackbox_sal.jobs.batch/g
s/\bblackbox_sal\.batch_ray\b/blackbox_sal.jobs.batch_ray/g
s/\bblackbox_sal\.datasets\b/blackbox_sal.jobs.datasets/g
s/\bblackbox_sal\.explaining\b/blackbox_sal.api.explaining/g
s/\bblackbox_sal\.tasks\b/blackbox_sal.api.tasks/g
s/\bblackbox_sal\.torch_export\b/blackbox_sal.gradient_graph.torch_export/g
s#\bblackbox_sal/config\.py\b#blackbox_sal/vocabulary/config.py#g
s#\bblackbox_sal/result\.py\b#blackbox_sal/vocabulary/result.py#g
s#\bblackbox_sal/errors\.py\b#blackbox_sal/vocabulary/errors.py#g
s#\bblackbox_sal/runs\.py\b#blackbox_sal/vocabulary/runs.py#g
s#\bblackbox_sal/scores\.py\b#blackbox_sal/vocabulary/scores.py#g
s#\bblackbox_sal/differences\.py\b#blackbox_sal/vocabulary/differences.py#g
s#\bblackbox_sal/batch\.py\b#blackbox_sal/jobs/batch.py#g
s#\bblackbox_sal/batch_ray\.py\b#blackbox_sal/jobs/batch_ray.py#g
s#\bblackbox_sal/datasets\.py\b#blackbox_sal/jobs/datasets.py#g
s#\bblackbox_sal/explaining\.py\b#blackbox_sal/api/explaining.py#g
s#\bblackbox_sal/tasks\.py\b#blackbox_sal/api/tasks.py#g
s#\bblackbox_sal/torch_export\.py\b#blackbox_sal/gradient_graph/torch_export.py#g
