"""Jobs over a dataset: reading rows (:mod:`.datasets`), the batch job (:mod:`.batch`) and its
Ray Data twin (:mod:`.batch_ray`)."""
