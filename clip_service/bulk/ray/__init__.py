"""clip-service on Ray Data: ``ClipEmbed`` for ``Dataset.map_batches``, ``embed_dataset`` to apply it.

    import ray
    from clip_service.bulk.ray import embed_dataset

    images = ray.data.read_parquet("s3://bucket/listing/")          # an id column and a url column
    embed_dataset(images, actors=8).write_parquet("s3://bucket/vectors/")

``clip-service embed INPUT -o OUT --ray [ADDRESS]`` runs the same step as a job
(``job.py``). Needs ``pip install '.[ray]'`` beside the model's requirements.
"""

from .actor import ClipEmbed, actor_cpus, embed_dataset

__all__ = ["ClipEmbed", "actor_cpus", "embed_dataset"]
