"""Alice's view mining (ICCV 2023; ``reference/dira_caid_transfer_alice_cadpe.md`` §4.3): crops of two different CT
scans centred on the same anatomy form positive pairs.

Points are matched with a small self-supervised anatomical embedding trained like SAM (Yan et al., TMI 2022), with
an oracle built from the synthetic anatomy's known landmarks, or drawn at random (the ablation control).

Conventions: volumes are float32 in [0, 1] with axes ``(x, y, z)`` (``hu_to_unit`` of the transposed HU array);
points are integer voxel indices ``(x, y, z)``; embeddings have stride 2.

Modules: :mod:`.volumes` (reading a LUNA16 root), :mod:`.embedding` (network and training, with
:func:`~eden_lib.losses.info_nce.in_batch_info_nce` over corresponding voxels), :mod:`.matching` (matching and pair
mining), :mod:`.views` (batches of crop pairs).
"""
