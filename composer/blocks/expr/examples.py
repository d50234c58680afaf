"""Losses written as expressions: the reference forms that tests, benchmarks and docs share.

NT-Xent and InfoNCE equal their hand-written blocks in value and gradient (tests/blocks/test_expr.py) on one
process and, for NT-Xent, on several (the gather with gradient and the rank offset of the targets make it
SimCLR's global loss); Barlow Twins and SimSiam equal lightly's losses.
"""

# SimCLR's objective.py · add_contrastive_loss, with its gather and labels, written in the language
NT_XENT = """
h = normalize(z, dim=-1, eps=0.000001)
n = size(h, 1)
big = all_gather(transpose(h, 0, 1))
labels = arange(n) + n * rank()
mask = 1000000000.0 * one_hot(labels, size(big, 0))
a1 = big[:, 0]
a2 = big[:, 1]
loss_a = cross_entropy(cat(h[0] @ t(a2) / 0.1, h[0] @ t(a1) / 0.1 - mask, dim=1), labels)
loss_b = cross_entropy(cat(h[1] @ t(a1) / 0.1, h[1] @ t(a2) / 0.1 - mask, dim=1), labels)
loss_a + loss_b
"""
# facebookresearch/moco · builder.py · MoCo.forward (inputs already normalised, as the shipped block takes them)
INFO_NCE = """
l_pos = sum(query * positive, dim=1, keepdim=True)
l_neg = query @ t(negatives)
cross_entropy(cat(l_pos, l_neg, dim=1) / 0.2, full(size(query, 0), 0))
"""
# facebookresearch/barlowtwins · main.py · BarlowTwins.forward (SyncBN statistics: gathered; lambda 0.0051)
BARLOW_TWINS = """
a = standardize(all_gather(z[0]))
b = standardize(all_gather(z[1]))
c = t(a) @ b / size(a, 0)
sum((diag(c) - 1) ** 2) + 0.0051 * sum(offdiag(c) ** 2)
"""
# facebookresearch/simsiam · main_simsiam.py · criterion = -(cos(p1, z2).mean() + cos(p2, z1).mean()) * 0.5
SIMSIAM = """
-(mean(cosine(p[0], z[1])) + mean(cosine(p[1], z[0]))) / 2
"""
