"""Mutual Pseudo Label Refinement (CMMT §3.1, "MPLR").

An unclustered text ``t_i^o`` is assigned through the image modality:

1. paired instance search: ``v_i = PIS(t_i^o)``, the image the caption describes;
2. if ``v_i`` is unclustered, ``t_i^o`` stays unclustered; otherwise
   ``v_i^c = argmax_{v in C_k^v, v != v_i} <v_i, v>``, the most similar OTHER clustered image
   of ``v_i``'s cluster ``C_k^v`` (``v_i`` itself when it is alone there);
3. ``t_i = PIS(v_i^c)``: among ``v_i^c``'s captions, the clustered one most similar to
   ``t_i^o`` (an image has several captions; the notes leave the choice open);
4. if such a ``t_i`` exists, ``t_i^o`` joins its cluster: ``C_k^t <- [C_k^t, t_i^o]``.

Symmetrically for an unclustered image ``v^o``: ``t = PIS(v^o)`` is its clustered caption most
similar to ``v^o`` in the joint embedding space (none clustered -> ``v^o`` stays), ``t^c`` the most similar other member of ``t``'s text
cluster, ``v = PIS(t^c)`` its image; if ``v`` is clustered, ``v^o`` joins ``v``'s cluster.

Both directions read the labels from BEFORE refinement (a rescued sample never rescues
another), so the result does not depend on the order of the samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Refined:
    image_labels: np.ndarray  # int64 [N_img], -1 = still unclustered
    text_labels: np.ndarray  # int64 [N_txt]
    rescued_images: int
    rescued_texts: int


def _nearest_other(
    feats: torch.Tensor, labels: np.ndarray, index: int, query: torch.Tensor | None = None
) -> int:
    """The member of ``index``'s cluster (other than ``index``) most similar to it."""
    members = np.flatnonzero(labels == labels[index])
    others = members[members != index]
    if others.size == 0:
        return index
    q = feats[index] if query is None else query
    sims = feats[torch.from_numpy(others)] @ q
    return int(others[int(torch.argmax(sims))])


def _best_clustered(candidates: np.ndarray, labels: np.ndarray, feats: torch.Tensor, query) -> int:
    """The clustered candidate most similar to ``query`` (-1 when none is clustered)."""
    clustered = candidates[labels[candidates] >= 0]
    if clustered.size == 0:
        return -1
    if clustered.size == 1:
        return int(clustered[0])
    sims = feats[torch.from_numpy(clustered)] @ query
    return int(clustered[int(torch.argmax(sims))])


def refine(
    image_labels: np.ndarray,
    text_labels: np.ndarray,
    text_image: np.ndarray,
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
) -> Refined:
    """MPLR of both modalities; ``text_image[k]`` = index of caption k's image (PIS of texts)."""
    li = np.asarray(image_labels, np.int64)
    lt = np.asarray(text_labels, np.int64)
    text_image = np.asarray(text_image, np.int64)
    captions_of: list[list[int]] = [[] for _ in range(li.size)]
    for k, i in enumerate(text_image):
        captions_of[int(i)].append(k)
    captions = [np.asarray(c, np.int64) for c in captions_of]
    vf = torch.nn.functional.normalize(image_feats.float(), dim=1)
    tf = torch.nn.functional.normalize(text_feats.float(), dim=1)

    new_t = lt.copy()
    for k in np.flatnonzero(lt < 0):
        v = int(text_image[k])  # v_i = PIS(t_i^o)
        if li[v] < 0:
            continue
        vc = _nearest_other(vf, li, v)  # v_i^c
        t = _best_clustered(captions[vc], lt, tf, tf[k])  # t_i = PIS(v_i^c)
        if t >= 0:
            new_t[k] = lt[t]

    new_i = li.copy()
    for v in np.flatnonzero(li < 0):
        t = _best_clustered(captions[v], lt, tf, vf[v])  # t = PIS(v^o)
        if t < 0:
            continue
        tc = _nearest_other(tf, lt, t)  # t^c
        vv = int(text_image[tc])  # PIS(t^c)
        if li[vv] >= 0:
            new_i[v] = li[vv]

    return Refined(
        image_labels=new_i,
        text_labels=new_t,
        rescued_images=int(((li < 0) & (new_i >= 0)).sum()),
        rescued_texts=int(((lt < 0) & (new_t >= 0)).sum()),
    )
