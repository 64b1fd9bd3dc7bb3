"""Components shared by several methods (each method module imports only these, never another method):
the two-view instance-discrimination branches (MoCo-v2, Barlow Twins, SimSiam) and the discriminative-restorative
family of CAiD and DiRA."""
