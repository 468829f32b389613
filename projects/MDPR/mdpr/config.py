"""Config keys of the MDPR project, under ``MODEL.MDPR``.

The official code keeps these as uncommented root-level keys (``ATTN_NUM``, ``PART_NUM``,
``ATTN_GUIDED``, ``FUSION_ENABLE``, ``DISTILLATION_ENABLE``); here they live under ``MODEL.MDPR``
with their meaning written beside them. The per-head cross-entropy and triplet terms keep
FastReID's keys (``MODEL.LOSSES.CE.*``, ``MODEL.LOSSES.TRI.*``) and the heads FastReID's
``MODEL.HEADS.*`` (pooling, classifier, scale, margin, BN-neck), as the official configs do.
"""

from fastreid.config import CfgNode

__all__ = ["add_mdpr_config"]


def add_mdpr_config(cfg):
    """Add the ``MODEL.MDPR`` node with the official model's defaults.

    Args:
        cfg (CfgNode): a config, modified in place.
    """
    cfg.MODEL.MDPR = CfgNode()
    m = cfg.MODEL.MDPR
    # Hard content branch: number of equal horizontal stripes of the final map (P; official
    # PART_NUM). Each stripe gets its own embedding, head and descriptor slice (top stripe first).
    m.NUM_STRIPES = 2
    # Soft content branch: number of foreground attention maps (M; official ATTN_NUM). The attention
    # makers output M + 1 maps, the last being the background.
    m.NUM_PARTS = 2
    # Width E of every branch embedding (hard global, stripes, attention levels 4 and 3, each BAP
    # part); the fused map has 4E channels. 512 in the official configs.
    m.EMBEDDING_DIM = 512
    # Guide the level-3 attention with the (upsampled, 1x1-convolved) level-4 attention (official
    # ATTN_GUIDED). Off: level 3 makes its attention from its own features only.
    m.GUIDANCE = True
    # Fuse both branches into one 4E-channel map with its own head, loss and descriptor slice
    # (official FUSION_ENABLE). Off: no fusion modules, the descriptor is 4E shorter.
    m.FUSION = True
    # Mutual distillation between the hard-global and level-4 attention features through two
    # predictors (official DISTILLATION_ENABLE). Off: no predictors, no distillation term.
    m.DISTILLATION = True
    # Attention diversity (cosine between the BAP part vectors) and attention mass terms, per
    # level. The official MDPR meta-architecture ignores its switch for these; this one is honoured.
    m.DIVERSITY = True
    # Weight of each level's diversity term (sum over part pairs of the batch-mean cosine).
    m.DIVERSITY_WEIGHT = 1.0
    # Weight of each level's attention mass term (batch-mean sum of the foreground maps).
    m.MASS_WEIGHT = 0.001
    # Weight of the mutual distillation term (-1/2 of the two predictor-to-target cosines).
    m.DISTILLATION_WEIGHT = 1.0
    # Weight of the cross-entropy of the two BAP heads (each also scaled by MODEL.LOSSES.CE.SCALE).
    m.BAP_WEIGHT = 1.0
