"""Pure decision code (docs/method.md, "Decision per step"): no nn.Module, no tensors.

``trigger`` decides *when* caching may start, ``decision`` *which* granularity acts (the hybrid
score and the joint-scheduling table), ``interval`` how many reused steps in a row are allowed.
``signals`` holds the small tensor helpers that produce the scalars these functions consume.
"""
