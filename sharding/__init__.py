"""Sharding for r1jax: device meshes, logical-axis rules and their presets, and placement of arrays.

Every parameter and key activation carries logical axis names ("embed", "experts", "batch", ...). One rules
table (`rules.Rules`) maps them to the mesh axes `data`, `fsdp`, `expert`, `tensor`; presets are named
tables. Model code never names a mesh axis: it calls `context.constrain(x, ("batch", "length", "act_embed"))`.
"""

MESH_AXES = ("data", "fsdp", "expert", "tensor")
