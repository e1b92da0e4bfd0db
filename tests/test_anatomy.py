"""The anatomy step: lungs, bone and the heart region, from HU alone (pipeline/anatomy.py)."""

from __future__ import annotations

import numpy as np
import pytest

from CoronaryCalciumDINOLib.pipeline import candidates as cd
from CoronaryCalciumDINOLib.pipeline.anatomy import (
    AIR_HU,
    INNER_MAX_CM3,
    OUTSIDE_AIR_HU,
    _largest_filled,
    _hulls,
    _midline,
    _right_lung_cut_front,
    find_anatomy,
    find_lungs,
    heart_levels,
    inner_calcification,
)

SPACING = (5.0, 1.0, 1.0)


def _ellipse(shape, cy, cx, ry, rx):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _bone(img, cy, cx, ry, rx, cortex=800.0, marrow=250.0):
    img[_ellipse(img.shape, cy, cx, ry, rx)] = cortex
    img[_ellipse(img.shape, cy, cx, ry - 2, rx - 2)] = marrow


def _thorax(nz=30):
    """A chest CT (1 mm pixels, 5 mm slices, 150 mm: a cardiac scan's length) drawn by hand:
    a fatty body, two lungs, the heart between them, the sternum in front, a vertebra behind,
    a rib beside the spine and the descending aorta beside the spine. Returns
    (hu, {name: (y, x)} of a 3 x 3 mm speck of 400 HU on every slice)."""
    s = np.full((200, 260), -1000.0, np.float32)
    s[_ellipse(s.shape, 100, 130, 92, 125)] = -100.0  # body: fat
    s[_ellipse(s.shape, 100, 60, 62, 45)] = -850.0  # right lung (patient right: low columns)
    s[_ellipse(s.shape, 100, 200, 62, 45)] = -850.0  # left lung
    s[_ellipse(s.shape, 95, 130, 45, 42)] = 40.0  # heart
    s[_ellipse(s.shape, 145, 160, 11, 11)] = 40.0  # descending aorta
    _bone(s, 20, 130, 7, 16)  # sternum
    _bone(s, 172, 130, 18, 20)  # vertebral body
    _bone(s, 170, 92, 6, 8)  # a rib beside the spine
    specks = {"heart": (95, 92), "aorta": (134, 160), "sternum_edge": (29, 145), "rib": (170, 92)}
    hu = np.repeat(s[None], nz, axis=0)
    for y, x in specks.values():
        hu[:, y - 1: y + 2, x - 1: x + 2] = 400.0
    return hu, specks


def _candidate_at(c, y, x):
    """Index of the candidate whose voxels hold CT pixel (y, x) on slice 10."""
    uid = c.ids[10, y - c.field.y0, x - c.field.x0]
    assert uid > 0
    return int(np.flatnonzero(c.uid == uid)[0])


def test_hand_drawn_thorax_keeps_the_heart_and_drops_bone_aorta_and_chest_wall():
    hu, specks = _thorax()
    an = find_anatomy(hu, SPACING)
    assert an.found
    c = cd.find_candidates(hu, SPACING, centre_yx=(95.0, 130.0))
    keep = cd.in_heart_region(c, an)
    assert keep[_candidate_at(c, *specks["heart"])]
    for name in ("aorta", "sternum_edge", "rib"):
        assert not keep[_candidate_at(c, *specks[name])], name
    # the bone itself (sternum, vertebra) never reaches the detector
    assert not keep[_candidate_at(c, 20, 130)]
    assert not keep[_candidate_at(c, 172, 130)]
    # a lung is not heart region; the middle of the heart is
    assert not an.in_region(np.array([10]), np.array([100]), np.array([60]))[0]
    assert an.in_region(np.array([10]), np.array([95]), np.array([130]))[0]


def test_a_heavily_calcified_coronary_artery_the_size_of_a_bone_stays_heart_region():
    """Calcium filling an artery over many slices joins into a region of a bone's size on the
    working grid (here 6 x 6 mm over 25 slices: 4.5 cm^3). Lying wholly inside the lungs'
    hull, it is the heart's calcium, not bone; the sternum, vertebra and rib stay bone."""
    hu, specks = _thorax()
    hu[2:27, 58:64, 140:146] = 600.0  # on the heart's front, left of the midline
    an = find_anatomy(hu, SPACING)
    c = cd.find_candidates(hu, SPACING, centre_yx=(95.0, 130.0))
    keep = cd.in_heart_region(c, an) & ~cd.on_structure_leaving_region(c, hu, an)
    artery = _candidate_at(c, 60, 142)
    assert keep[artery]
    assert not an.on_bone(np.array([10]), np.array([60]), np.array([142]))[0]
    for y, x in ((20, 130), (172, 130), specks["rib"]):
        assert an.on_bone(np.array([10]), np.array([y]), np.array([x]))[0], (y, x)
        assert not keep[_candidate_at(c, y, x)], (y, x)


def test_vertebrae_inside_a_heart_centred_view_stay_bone_beside_a_heavily_calcified_artery():
    """A heart-centred view (the body fills the image, the lungs reach its back edge, an odd
    image size): the vertebral bodies lie inside the lungs' hull, split by their discs into
    pieces of 5.7 cm^3, none reaching the image's edge; the hull's back quarter keeps them
    bone (and the spine the region's back limit), while an artery filled with calcium on the
    heart's front (4.5 cm^3) is heart region."""
    s = np.full((201, 261), -100.0, np.float32)  # the body fills the view: fat
    s[_ellipse(s.shape, 120, 60, 90, 45)] = -850.0  # lungs, cut by the view's back edge
    s[_ellipse(s.shape, 120, 200, 90, 45)] = -850.0
    s[_ellipse(s.shape, 95, 130, 45, 42)] = 40.0  # heart
    hu = np.repeat(s[None], 30, axis=0)
    for k in range(30):
        if k % 4 != 3:  # a disc every fourth slice
            _bone(hu[k], 170, 130, 10, 12)
    hu[2:27, 58:64, 140:146] = 600.0  # the calcified artery
    an = find_anatomy(hu, SPACING)
    assert an.found
    for z in (1, 13, 25):
        assert an.on_bone(np.array([z]), np.array([170]), np.array([130]))[0], z
    assert not an.on_bone(np.array([10]), np.array([60]), np.array([142]))[0]
    assert an.in_region(np.array([10]), np.array([60]), np.array([142]))[0]
    assert not an.in_region(np.array([10]), np.array([170]), np.array([130]))[0]


def test_a_vertebral_body_cut_by_the_views_back_edge_is_bone_however_little_of_it_is_on_view():
    """A heart-centred view set forward of the heart cuts the vertebral body at its back edge
    (real dev scan 3 in a 180 mm view moved 25 mm forward: 0.4 cm^3 of it on view over six
    slices, its front cortex at 650-980 HU, which the pipeline scored as 485 points of RCA).
    The part on view is bone, however small (here 3 x 77 mm^2 x 5 mm: 1.2 cm^3), so neither it
    nor calcium on its front is heart region; the heart and its calcium stay."""
    s = np.full((201, 261), -100.0, np.float32)  # the body fills the view: fat
    s[_ellipse(s.shape, 110, 60, 90, 45)] = -850.0  # lungs, cut by the view's back edge
    s[_ellipse(s.shape, 110, 200, 90, 45)] = -850.0
    s[_ellipse(s.shape, 95, 130, 45, 42)] = 40.0  # heart
    hu = np.repeat(s[None], 30, axis=0)
    for k in (12, 13, 14):  # the vertebral body enters the view on three slices
        _bone(hu[k], 211, 130, 15, 18)
    hu[:, 60:63, 100:103] = 400.0  # calcium on the heart
    an = find_anatomy(hu, SPACING)
    assert an.found
    cap = np.nonzero(hu[13] >= 180)
    cap = (cap[0][cap[0] > 150], cap[1][cap[0] > 150])
    assert cap[0].size == 77 and cap[0].min() >= 195  # a sliver at the back edge: 77 mm^2
    z = np.full(cap[0].size, 13)
    assert an.on_bone(z, *cap).all()
    assert not an.in_region(z, *cap).any()
    c = cd.find_candidates(hu, SPACING, centre_yx=(120.0, 130.0))  # a field reaching the back edge
    keep = cd.in_heart_region(c, an)
    cap_uid = c.ids[13, 199 - c.field.y0, 130 - c.field.x0]
    assert cap_uid > 0
    assert not keep[int(np.flatnonzero(c.uid == cap_uid)[0])]
    assert keep[_candidate_at(c, 61, 101)]


def test_a_vertebral_bodys_front_cortex_whose_marrow_runs_to_the_back_edge_is_bone():
    """A heart-centred view set further forward cuts the vertebral body inside its marrow:
    only the front cortex is dense, a thin plate apart from the edge (real dev scan 3 in a
    200 mm view moved 20 mm forward: 14 mm of marrow behind it, 1,083 points scored as RCA).
    With tissue only between it and the back edge, within 20 mm, it is bone however small; a
    calcification as close to the edge with lung behind it, calcium on the heart's back, and
    the same plates 24 mm in front of the edge are not."""
    s = np.full((201, 261), -100.0, np.float32)  # the body fills the view: fat
    s[_ellipse(s.shape, 110, 60, 90, 45)] = -850.0  # lungs, cut by the view's back edge
    s[_ellipse(s.shape, 110, 200, 90, 45)] = -850.0
    s[_ellipse(s.shape, 95, 130, 45, 42)] = 40.0  # heart
    hu = np.repeat(s[None], 30, axis=0)
    hu[:, 170:201, 112:149] = 60.0  # vertebral marrow, near soft tissue, running to the edge
    hu[10:14, 184:187, 115:131] = 700.0  # its front cortex, 14 mm in front of the back edge:
    hu[10:14, 184:187, 136:146] = 700.0  # two plates of 3 mm x 16 (10) mm x 4 slices of 5 mm
    hu[:, 160:163, 140:143] = 400.0  # calcium on the heart's back, 38 mm from the edge
    hu[:, 181:184, 40:43] = 400.0  # calcification in the right lung, lung behind it
    an = find_anatomy(hu, SPACING)
    assert an.found
    z = np.full(2, 12)
    assert an.on_bone(z, np.array([185, 185]), np.array([120, 140])).all()
    assert not an.in_region(z, np.array([185, 185]), np.array([120, 140])).any()
    assert not an.on_bone(z, np.array([161, 182]), np.array([141, 41])).any()
    assert an.in_region(np.array([12]), np.array([161]), np.array([141]))[0]
    hu[10:14, 184:187, 115:146] = 60.0  # the same plates 24 mm in front of the edge: not bone
    hu[10:14, 174:177, 115:131] = 700.0
    hu[10:14, 174:177, 136:146] = 700.0
    assert not find_anatomy(hu, SPACING).on_bone(z, np.array([175, 175]), np.array([120, 140])).any()


def test_a_plaque_on_the_descending_aortas_side_wall_near_the_back_edge_is_not_the_spine():
    """A heart-centred view whose back edge runs close behind the descending aorta: a plaque
    on the aorta's side wall lies within 20 mm of the edge with tissue behind it, like a
    vertebral body's front cortex, but it is a strip along the view (at least twice as tall
    as wide on the working grid), not a plate across it or a blob. Taken for bone it lay
    beside the vertebral body, its top in front of the body's, within reach of the spine's
    column, and became the spine's front: the aorta, searched for beside it, was not found,
    and a plaque on its front wall stayed heart region (real dev scan 3 in a 180 mm field
    moved 35 mm towards the patient's left: 532 "RCA" points)."""
    s = np.full((190, 261), -100.0, np.float32)  # the body fills the view: fat
    s[_ellipse(s.shape, 110, 60, 90, 45)] = -850.0  # lungs, cut by the view's back edge
    s[_ellipse(s.shape, 110, 200, 90, 45)] = -850.0
    s[_ellipse(s.shape, 85, 130, 45, 42)] = 40.0  # heart
    s[_ellipse(s.shape, 158, 148, 10, 10)] = 40.0  # descending aorta, beside the vertebral body
    s[171:, 150:170] = -100.0  # tissue behind it to the back edge
    _bone(s, 185, 130, 18, 16)  # vertebral body, cut by the back edge: its front at row 167
    hu = np.repeat(s[None], 30, axis=0)
    # the side-wall plaque: 3 mm x 11 mm on 4 slices (2 x 6 working cells, as scan 3's; under
    # MIN_BONE_CM3, so that only the back-edge rule could make it bone), reaching 20 mm
    # from the back edge
    hu[9:13, 160:171, 157:160] = 700.0
    hu[10:12, 147:150, 143:154] = 400.0  # a plaque on the front wall
    an = find_anatomy(hu, SPACING)
    assert an.found
    z = np.full(3, 10)
    assert not an.on_bone(z, np.array([161, 165, 170]), np.array([158, 158, 158])).any()
    assert not an.in_region(np.array([10, 11]), np.array([148, 148]), np.array([148, 148])).any()
    assert an.on_bone(np.array([10]), np.array([180]), np.array([130]))[0]  # the vertebral body
    # the same plaque lying across the view, a plate like the cortex, is bone; so is a blob
    hu[9:13, 160:171, 157:160] = 40.0
    hu[9:13, 166:169, 150:171] = 700.0
    assert find_anatomy(hu, SPACING).on_bone(np.array([10]), np.array([167]), np.array([160]))[0]
    hu[9:13, 166:169, 150:171] = 40.0
    hu[9:13, 163:171, 157:163] = 700.0  # 6 x 8 mm (a piece of a vertebra at a scan's end)
    assert find_anatomy(hu, SPACING).on_bone(np.array([10]), np.array([167]), np.array([160]))[0]


def test_a_rib_beside_one_lung_is_not_the_spine_when_the_view_shows_little_of_the_spine():
    """A heart-centred view set forward of the heart shows only a sliver of the vertebral body
    at its back edge, and a rib behind the left lung at its side, in the back quarter of the
    lungs' hull. The rib lies beside one lung only; the spine lies between them. Taken for
    the spine, the rib's front would cut the heart region across the slice (real dev scan 3
    in a 200 mm view moved 30 mm forward and 20 mm left: through its left main / LAD)."""
    s = np.full((157, 260), -100.0, np.float32)  # the body fills the view: fat
    s[_ellipse(s.shape, 100, 65, 60, 42)] = -850.0  # right lung
    s[_ellipse(s.shape, 100, 195, 60, 42)] = -850.0  # left lung
    s[_ellipse(s.shape, 95, 130, 45, 40)] = 40.0  # heart
    s[_ellipse(s.shape, 140, 160, 11, 11)] = 40.0  # descending aorta
    _bone(s, 172, 130, 18, 20)  # vertebral body: rows 154-156 on view
    _bone(s, 128, 246, 9, 7)  # a rib beside the left lung, larger on view than the spine
    hu = np.repeat(s[None], 30, axis=0)
    hu[:, 127:130, 109:112] = 400.0  # calcium on the heart, behind the rib's front
    an = find_anatomy(hu, SPACING)
    assert an.found
    assert an.in_region(np.array([10]), np.array([128]), np.array([110]))[0]
    c = cd.find_candidates(hu, SPACING, centre_yx=(95.0, 130.0))
    assert cd.in_heart_region(c, an)[_candidate_at(c, 128, 110)]
    assert an.on_bone(np.array([10]), np.array([128]), np.array([246]))[0]


def test_inner_calcification_lies_inside_the_hull_away_from_the_image_edge_and_the_spine():
    hull = np.zeros((12, 60, 40), bool)
    hull[:, 5:60, 5:35] = True  # reaching the image's back edge, as in a heart-centred view
    dense = np.zeros_like(hull)
    dense[2:4, 15:17, 15:17] = True  # inside: the heart's calcium
    dense[2:4, 3:7, 25:27] = True  # crossing the hull's front edge: sternum, cartilage
    dense[2:4, 55:58, 8:10] = True  # inside the hull, 2 cells from the image's edge: a bone cut by the view
    dense[2:4, 47:50, 20:22] = True  # inside the hull, in its back quarter: a vertebral body, a rib head
    dense[0:12, 20:32, 6:12] = True  # inside, but far larger than calcium: bone
    cell = INNER_MAX_CM3 / 100.0  # so the last region (864 cells) is over the limit, the others (8-16) under
    inner = inner_calcification(dense, hull, cell)
    assert inner[2:4, 15:17, 15:17].all()
    assert inner.sum() == 8


def test_the_calcified_rim_of_a_costal_cartilage_beside_the_sternum_is_not_heart_region():
    """A heart-centred view where the sternum lies deeper (rows 33-47) and a costal
    cartilage beside it reaches 2 mm behind its back edge, 18 mm right of the midline, with a
    calcified rim; the heart's front is 8 mm further back. The rim is dropped, the heart's
    calcium kept."""
    s = np.full((200, 260), -1000.0, np.float32)
    s[_ellipse(s.shape, 100, 130, 92, 125)] = -100.0
    s[_ellipse(s.shape, 100, 60, 62, 45)] = -850.0
    s[_ellipse(s.shape, 100, 200, 62, 45)] = -850.0
    s[_ellipse(s.shape, 100, 130, 45, 42)] = 40.0  # heart: front at row 55
    _bone(s, 40, 130, 7, 16)  # sternum: back at row 47
    s[_ellipse(s.shape, 43, 106, 5, 9)] = 120.0  # costal cartilage, back at row 48
    _bone(s, 172, 130, 18, 20)
    hu = np.repeat(s[None], 30, axis=0)
    for y, x in ((48, 108), (100, 92)):  # the cartilage's rim, calcium in the heart (3 slices)
        hu[9:12, y - 1: y + 2, x - 1: x + 2] = 400.0
    an = find_anatomy(hu, SPACING)
    assert an.found
    c = cd.find_candidates(hu, SPACING, centre_yx=(100.0, 130.0))
    keep = cd.in_heart_region(c, an)
    assert keep[_candidate_at(c, 100, 92)]
    assert not keep[_candidate_at(c, 48, 108)]


def test_a_calcified_cartilage_running_from_the_chest_wall_into_the_region_is_dropped():
    """On a heart-centred view the region's front edge can pass through a calcified costal
    cartilage: on most slices it lies in the chest wall, in front of the region, and on two it
    bends back into the region. Those two candidates lie wholly inside the region, but the
    structure they belong to (connected in 3D) lies mostly outside: they are dropped. A small
    calcification the region's edge cuts, a large one wholly inside and calcium of the heart
    are kept; without the CT the rule is not applied."""
    from CoronaryCalciumDINOLib.pipeline.anatomy import Anatomy
    from CoronaryCalciumDINOLib.pipeline.inference import keep_heart_region

    nz, ny, nx = 30, 200, 260
    hu = np.full((nz, ny, nx), 40.0, np.float32)
    region = np.zeros((nz, ny, nx), bool)
    region[:, 50:190, 20:240] = True  # the region's front edge at row 50
    an = Anatomy((nz, ny, nx), (1, 1), True, np.zeros_like(region), np.zeros_like(region), region)
    hu[5:21, 43:48, 100:106] = 400.0  # the cartilage in the chest wall, slices 5-20 (2,400 mm^3)
    hu[21:23, 46:53, 100:106] = 400.0  # bending back ...
    hu[23:25, 51:55, 100:106] = 400.0  # ... into the region on slices 23-24
    hu[10:12, 49:53, 150:153] = 400.0  # a calcification the edge cuts (120 mm^3, 30 outside)
    hu[8:14, 60:66, 60:66] = 400.0  # a large calcification inside (1,080 mm^3)
    hu[15:17, 100:103, 130:133] = 400.0  # calcium in the heart
    c = cd.find_candidates(hu, SPACING, centre_yx=(100.0, 130.0))
    assert cd.in_heart_region(c, an)[[_candidate_at_z(c, z, 52, 102) for z in (23, 24)]].all()
    leaving = cd.on_structure_leaving_region(c, hu, an)
    for z in (23, 24):
        assert leaving[_candidate_at_z(c, z, 52, 102)]
    for z, y, x in ((10, 51, 151), (11, 51, 151), (10, 62, 62), (15, 101, 131)):
        assert not leaving[_candidate_at_z(c, z, y, x)], (z, y, x)
    kept, dropped = keep_heart_region(c, an, hu)
    assert dropped == int(np.count_nonzero(~cd.in_heart_region(c, an) | leaving)) and dropped >= 2
    assert all(kept.ids[z, 52 - c.field.y0, 102 - c.field.x0] not in kept.uid for z in (23, 24))
    assert len(keep_heart_region(c, an)[0]) == int(cd.in_heart_region(c, an).sum())


def _candidate_at_z(c, z, y, x):
    """Index of the candidate whose voxels hold CT pixel (y, x) on slice ``z``."""
    uid = c.ids[z, y - c.field.y0, x - c.field.x0]
    assert uid > 0
    return int(np.flatnonzero(c.uid == uid)[0])


def test_a_sternum_too_small_to_be_bone_still_limits_the_region():
    """A heart-centred view cut short along the patient: the sternum lies on one slice only
    (1.5 cm^3 of dense cells, below the bone volume), and a costal cartilage beside it has a
    calcified rim on that slice and the two next to it. The sternum, found from its width,
    still starts the region behind it: the rim is dropped, the heart's calcium kept. A
    calcification as dense but narrow is never taken for a sternum."""
    from CoronaryCalciumDINOLib.pipeline import anatomy as A

    s = np.full((200, 260), -1000.0, np.float32)
    s[_ellipse(s.shape, 100, 130, 92, 125)] = -100.0
    s[_ellipse(s.shape, 100, 60, 62, 45)] = -850.0
    s[_ellipse(s.shape, 100, 200, 62, 45)] = -850.0
    s[_ellipse(s.shape, 100, 130, 45, 42)] = 40.0  # heart: front at row 55
    s[_ellipse(s.shape, 43, 106, 5, 9)] = 120.0  # costal cartilage, back at row 48
    _bone(s, 172, 130, 18, 20)
    hu = np.repeat(s[None], 30, axis=0)
    _bone(hu[10], 41, 130, 6, 16)  # the sternum, on slice 10 only: back at row 47
    for y, x in ((48, 108), (100, 92)):  # the cartilage's rim, calcium in the heart (3 slices)
        hu[9:12, y - 1: y + 2, x - 1: x + 2] = 400.0
    an = find_anatomy(hu, SPACING)
    assert an.found and not an.bone[10, 20, 65]  # not bone: too small a volume
    c = cd.find_candidates(hu, SPACING, centre_yx=(100.0, 130.0))
    keep = cd.in_heart_region(c, an)
    assert keep[_candidate_at(c, 100, 92)]
    assert not keep[_candidate_at(c, 48, 108)]

    # the rule itself: wide dense cells at the hull's front and near the body's front are a
    # sternum; narrow ones, or as wide but deeper (a long left main calcification), are not
    hull = np.zeros((1, 200, 130), bool)
    hull[0, 10:190, 5:125] = True  # its front quarter: rows 10-54
    body = np.zeros_like(hull)
    body[0, 8:195] = True
    dense = np.zeros_like(hull)
    bone = np.zeros_like(hull)
    wide = int(np.ceil(A.STERNUM_MIN_WIDTH_MM / 2.0))
    deep = int(A.STERNUM_MAX_DEPTH_MM / 2.0)
    cols = slice(65 - wide // 2, 65 - wide // 2 + wide)
    dense[0, 15:19, cols] = True
    assert A._chest_wall_limits(bone, hull, 5.0, dense, wide, body, deep)[0][0] == 18
    dense[0] = False
    dense[0, 15:19, 63:66] = True  # 6 mm across: a calcification
    assert A._chest_wall_limits(bone, hull, 5.0, dense, wide, body, deep)[0][0] == -1
    dense[0] = False
    dense[0, 40:44, cols] = True  # as wide, in the front quarter, but 64 mm behind the body's front
    assert A._chest_wall_limits(bone, hull, 5.0, dense, wide, body, deep)[0][0] == -1


def test_the_region_ends_at_the_vertebral_body_not_at_a_rib_reaching_the_back_quarter():
    """A rib's back arc at the side of the chest reaches the hull's back quarter with its front
    far in front of the spine (real chest CTs: 30-60 mm). The back of the heart in front of
    the spine (the left atrium, the posterior AV groove of the LCX and RCA) stays heart
    region; the spine's front, not the rib's, is the region's back limit."""
    from CoronaryCalciumDINOLib.pipeline import anatomy as A

    hu, _ = _thorax()
    hu[:, 90:161, 246:253] = 800.0  # the rib, outside the left lung, from row 90 to the back
    an = find_anatomy(hu, SPACING)
    z = np.array([10])
    assert an.in_region(z, np.array([128]), np.array([115]))[0]  # the heart's back, 26 mm behind the rib's front
    assert not an.in_region(z, np.array([172]), np.array([130]))[0]  # the vertebral body
    assert not an.in_region(z, np.array([150]), np.array([160]))[0]  # the descending aorta

    # the rule itself: the front of a spine joined to a rib head is the vertebral body's; a
    # part at the side is not the spine
    bone = np.zeros((1, 100, 130), bool)
    hull = np.zeros_like(bone)
    hull[0, 10:95, 5:125] = True  # its back quarter: rows > 73
    bone[0, 78:96, 55:75] = True  # the vertebral body, front at row 78
    bone[0, 60:90, 38:46] = True  # a rib reaching 36 mm forward at the side ...
    bone[0, 86:90, 46:55] = True  # ... its head joined to the body's back half
    bone[0, 50:96, 115:120] = True  # a rib's back arc at the side
    front, back, spine_x = A._chest_wall_limits(bone, hull, 5.0, cell_mm=2.0)
    assert back[0] == 78
    assert 55 <= spine_x[0] < 75
    assert A._chest_wall_limits(bone[:, :, :100], hull[:, :, :100], 5.0, cell_mm=2.0)[1][0] == 78  # no arc


def test_the_spine_of_a_heart_centred_view_lies_off_the_hulls_centre():
    """A heart-centred view is centred on the heart, left of the spine: the lungs' hull spans
    the whole image and the spine lies 30-40 % across it, far off the hull's middle. It is
    still the spine (it keeps its column from slice to slice); a rib's back arc at the
    image's side is not, nor is the smaller piece of one on a single slice."""
    from CoronaryCalciumDINOLib.pipeline import anatomy as A

    bone = np.zeros((5, 100, 100), bool)
    hull = np.zeros_like(bone)
    hull[:, 10:100, 0:100] = True  # cut by the view on three sides; its back quarter: rows > 77
    bone[:, 80:100, 10:30] = True  # the vertebral body, front at row 80, 30 mm off the hull's middle
    bone[:, 50:100, 92:97] = True  # a rib's back arc at the other side, front at row 50
    bone[2, 60:100, 55:70] = True  # a larger piece of bone in the back quarter on one slice
    front, back, spine_x = A._chest_wall_limits(bone, hull, 3.0, cell_mm=2.0)
    assert back.tolist() == [80] * 5
    assert np.all(np.abs(spine_x - 19.5) <= 1)


def test_the_descending_aorta_is_taken_across_a_few_slices_where_its_disc_is_broken():
    """Noise or a calcified wall can break the descending aorta's disc on a few slices (a
    real dev scan with 40 HU of noise: four 3 mm slices, where its wall plaque then became
    "RCA"). A run of such slices at most AORTA_GAP_MM long, between slices where it is found,
    takes the aorta from them; a longer run, and the slices beyond the last found, do not."""
    from CoronaryCalciumDINOLib.pipeline import anatomy as A

    nz, cell = 14, 2.0
    small = np.full((nz, 60, 60), -100.0, np.float32)  # fat
    yy, xx = np.mgrid[:60, :60]
    disc = (yy - 30) ** 2 + (xx - 32) ** 2 <= 6 ** 2  # 12 mm radius, beside the spine
    small[:, disc] = 40.0
    for k in (4, 5, 6, 7, 10, 11, 12, 13):  # fat across the disc: its thickest inscribed disc is 4 mm
        small[k, 26:35:4, 24:40] = -100.0
        small[k, 26:35, 28:37:4] = -100.0
    front = np.full(nz, 34)
    spine_x = np.full(nz, 26.0)
    soft_ok = np.ones(small.shape, bool)
    assert A.AORTA_GAP_MM == 15.0
    out = A.descending_aorta(small, soft_ok, front, spine_x, (cell, cell), dz=3.0)  # 4 slices: 12 mm
    for k in range(10):
        assert out[k, 30, 32], k
    for k in (10, 13):  # beyond the last slice found
        assert not out[k].any(), k
    out = A.descending_aorta(small, soft_ok, front, spine_x, (cell, cell), dz=5.0)  # 20 mm
    assert out[3, 30, 32] and out[8, 30, 32]
    for k in (4, 5, 6, 7):
        assert not out[k].any(), k


def test_noise_specks_in_the_descending_aorta_do_not_shrink_it():
    """Under a low-dose scan's noise single cells of the aorta's blood fall out of the
    soft-tissue band, and the thickest inscribed disc shrank to the distance between them
    (real dev scan 3 with 40 HU of noise: about 8 mm against 10 without), so the cut ended
    inside the wall and a plaque on the aorta's front wall stayed in the heart region.
    Specks of up to NOISE_HOLE_MM2 are filled first: the aorta keeps its radius."""
    from CoronaryCalciumDINOLib.pipeline import anatomy as A

    nz, cell = 6, 2.0
    small = np.full((nz, 60, 60), -100.0, np.float32)
    yy, xx = np.mgrid[:60, :60]
    small[:, (yy - 30) ** 2 + (xx - 32) ** 2 <= 6 ** 2] = 40.0  # 12 mm radius
    clean = small.copy()
    for dy in (-3, 0, 3):  # single-cell specks 6 mm apart across the disc (fat- and calcium-dense)
        for dx in (-3, 0, 3):
            small[:, 30 + dy, 32 + dx] = -100.0 if (dy + dx) % 6 else 200.0
    assert cell * cell <= A.NOISE_HOLE_MM2
    front, spine_x = np.full(nz, 34), np.full(nz, 26.0)
    ok = np.ones(small.shape, bool)
    want = A.descending_aorta(clean, ok, front, spine_x, (cell, cell), dz=3.0)
    out = A.descending_aorta(small, ok, front, spine_x, (cell, cell), dz=3.0)
    assert want[:, 30 - 7, 32].all()  # 14 mm in front of the centre: the wall, inside the cut
    assert np.array_equal(out, want)
    # a hole larger than a speck (fat between the aorta and the heart's back) still bounds it
    pocket = clean.copy()
    pocket[:, 26:30, 28:32] = -100.0  # 4 x 4 cells: 64 mm^2 > NOISE_HOLE_MM2
    assert 16 * cell * cell > A.NOISE_HOLE_MM2
    assert A.descending_aorta(pocket, ok, front, spine_x, (cell, cell), dz=3.0).sum() < want.sum()


def test_a_disc_off_the_descending_aortas_track_is_not_the_aorta():
    """Where the aorta touches the heart, the window beside the spine can hold a thicker part
    of the heart (the left atrium) than the aorta: on a few slices the disc found lies off
    the track the aorta keeps along the scan. It is not the aorta (a synthetic study lost
    left circumflex calcium at the edge of such a disc); those slices take the aorta from
    the slices round them."""
    from CoronaryCalciumDINOLib.pipeline import anatomy as A

    nz, cell = 14, 2.0
    small = np.full((nz, 60, 60), -100.0, np.float32)
    yy, xx = np.mgrid[:60, :60]
    small[:, (yy - 30) ** 2 + (xx - 32) ** 2 <= 6 ** 2] = 40.0  # the aorta, 12 mm, on the track
    for k in (5, 6, 7):  # its disc broken, and a thicker blob of heart at the window's front
        small[k, 26:35:4, 24:40] = -100.0
        small[k, 26:35, 28:37:4] = -100.0
        small[k, (yy - 19) ** 2 + (xx - 42) ** 2 <= 8 ** 2] = 40.0
    front, spine_x = np.full(nz, 34), np.full(nz, 26.0)
    out = A.descending_aorta(small, np.ones(small.shape, bool), front, spine_x, (cell, cell), dz=3.0)
    for k in (5, 6, 7):
        assert out[k, 30, 32], k  # taken from the slices round them
        assert not out[k, 19, 42], k  # the heart's blob
    assert not out[:, 19, 42].any()


def test_the_heart_in_front_of_a_lower_lobe_stays_in_the_region():
    """Low in the chest the lower lobes wrap round behind the heart: in a column through the
    heart's side the lung's front lies behind the heart, still in the front half of the
    lungs' hull. The heart in front of it (and its calcium) is heart region, not chest
    wall."""
    s = np.full((260, 320), -1000.0, np.float32)  # air well round the body
    s[_ellipse(s.shape, 130, 160, 92, 125)] = -100.0  # body: fat
    s[_ellipse(s.shape, 150, 105, 45, 40)] = -850.0  # right lower lobe
    s[_ellipse(s.shape, 150, 215, 45, 40)] = -850.0  # left lower lobe
    s[_ellipse(s.shape, 110, 160, 40, 50)] = 40.0  # heart, in front of the lobes' inner parts
    _bone(s, 50, 160, 7, 16)  # sternum
    _bone(s, 202, 160, 18, 20)  # vertebral body
    hu = np.repeat(s[None], 30, axis=0)
    for y, x in ((130, 130), (130, 190)):  # calcium at the heart's sides, in front of the lobes
        hu[:, y - 1: y + 2, x - 1: x + 2] = 400.0
    an = find_anatomy(hu, SPACING)
    assert an.found
    c = cd.find_candidates(hu, SPACING, centre_yx=(125.0, 160.0))
    keep = cd.in_heart_region(c, an)
    assert keep[_candidate_at(c, 130, 130)] and keep[_candidate_at(c, 130, 190)]


def _view_set_towards_the_left(right_lung_front: int = 110):
    """A heart-centred view (1 mm pixels, 5 mm slices) set towards the patient's left: the
    body fills it, the heart runs out of its right edge (column 0), the left lung is cut by
    its left edge, and of the right lung only a posterior piece shows, leaving the view at
    its own front row ``right_lung_front``. A 3 x 3 mm speck of 400 HU on the heart near the
    right edge, at (80, 20)."""
    s = np.full((200, 200), -100.0, np.float32)  # the body fills the view: fat
    s[_ellipse(s.shape, 95, 60, 50, 70)] = 40.0  # heart, cut by the right edge
    s[_ellipse(s.shape, 110, 175, 70, 40)] = -850.0  # left lung, front at row 40
    depth = 190 - right_lung_front
    s[_ellipse(s.shape, right_lung_front + depth / 2, 0, depth / 2, 35)] = -850.0  # right lung's back
    hu = np.repeat(s[None], 30, axis=0)
    hu[:, 79:82, 19:22] = 400.0
    return hu


def test_the_heart_stays_region_when_the_right_lungs_front_is_out_of_view():
    """A heart-centred field set towards the patient's left shows only the back of the right
    lung, leaving the view at its front. The lungs' hull of what is on view cuts through the
    heart; the right lung's front lies out of view, and the mediastinum reaches the edge."""
    hu = _view_set_towards_the_left()
    an = find_anatomy(hu, SPACING)
    assert an.found and an.heart_levels is not None
    c = cd.find_candidates(hu, SPACING, centre_yx=(95.0, 60.0))
    assert cd.in_heart_region(c, an)[_candidate_at(c, 80, 20)]
    # the rule's own conditions (working grid: 2 mm rows): the lung leaves the view at its
    # front, and that front lies far behind the other lung's; only at the patient's right edge
    lungs = an.lungs[10]
    edge = _right_lung_cut_front(lungs, 2.0)
    assert edge[:, 1:].sum() == 0 and np.flatnonzero(edge[:, 0])[[0, -1]].tolist() == [20, 55]
    assert not _right_lung_cut_front(lungs[:, ::-1], 2.0).any()
    near = find_anatomy(_view_set_towards_the_left(right_lung_front=60), SPACING)
    assert not _right_lung_cut_front(near.lungs[10], 2.0).any()  # its front 20 mm behind
    # the hull takes in the edge on the slices within HULL_Z_MM of such a slice, no further
    one = np.zeros((9,) + lungs.shape, bool)
    one[4] = lungs
    hull, cut = _hulls(one, 1, 2.0)
    assert [bool(h[30, 0]) for h in hull] == [False, False, False, True, True, True, False, False, False]
    assert cut.tolist() == [bool(h[30, 0]) for h in hull]
    assert not _hulls(one, 1)[0][4][30, 0]  # without the rule the hull runs through the heart


def test_the_aorta_of_a_view_set_towards_the_left_is_found_from_the_spines_column():
    """In that view the hull of what is on view of the lungs runs through the heart, and the
    hull taking in the right edge has its middle 50 mm left of the midline: the ascending
    aorta (5 mm right of the spine) lies beyond reach of it and the pulmonary trunk (left of
    the aorta, in front, as thick within a tenth) would be taken. The hull reaches the edge
    and the midline is the spine's column."""
    s = np.full((200, 200), -100.0, np.float32)
    s[_ellipse(s.shape, 95, 60, 50, 70)] = 40.0  # heart, cut by the right edge
    s[_ellipse(s.shape, 110, 175, 70, 40)] = -850.0  # left lung
    s[_ellipse(s.shape, 150, 0, 40, 35)] = -850.0  # the right lung's back
    _bone(s, 178, 50, 15, 20)  # vertebral body
    hu = np.repeat(s[None], 40, axis=0)
    above = s.copy()
    above[_ellipse(s.shape, 95, 60, 50, 70)] = -100.0
    above[_ellipse(s.shape, 90, 45, 15, 15)] = 40.0  # ascending aorta
    above[_ellipse(s.shape, 70, 82, 14, 14)] = 40.0  # pulmonary trunk
    hu[20:] = above
    an = find_anatomy(hu, SPACING)
    assert an.heart_levels == (0, 19)
    assert an.aorta_axis is not None
    for k in (19, 30):
        assert np.hypot(*(an.aorta_axis[k] - (90, 45))) <= 3.0, (k, an.aorta_axis[k])
    hull = np.zeros((1, 10, 100), bool)
    hull[0, 2:8, 40:90] = True
    assert _midline(hull) == 64.5
    assert _midline(hull, np.array([-1.0, 20.0, 22.0, -1.0])) == 21.0
    assert _midline(hull, np.array([-1.0, -1.0])) == 64.5


def test_the_air_in_front_of_the_chest_in_a_fields_corner_is_not_lung():
    """A heart-centred field set towards the patient's left cuts the air in front of the chest
    in its corner: air at the image edge, large, its centre not against the front, and the
    skin's partial volume lifts its mean above :data:`OUTSIDE_AIR_HU`. Its median stays near
    -1000; a lung cut by the field's edge keeps its own."""
    small = np.full((20, 100, 100), 40.0, np.float32)  # working grid: 2 mm cells, 5 mm slices
    yy, xx = np.mgrid[:100, :100]
    lung = ((yy - 60) / 30.0) ** 2 + (xx / 25.0) ** 2 <= 1.0  # cut by the right edge
    corner = xx >= 50 + yy  # the front corner on the patient's left
    skin = corner & (xx < 58 + yy)  # partial volume along the body's surface
    small[:, lung] = -850.0
    small[:, corner] = -1000.0
    small[:, skin] = -690.0
    assert small[:, corner].mean() > OUTSIDE_AIR_HU and np.median(small[:, corner]) < OUTSIDE_AIR_HU
    body = np.stack([_largest_filled(m) for m in small > AIR_HU])
    lungs = find_lungs(small, body, 2 * 2 * 5 / 1000)
    assert lungs[:, lung].all()
    assert not lungs[:, corner].any()
    # where the lungs and the air round the patient are one region (its median that of the
    # air round the patient, as no lung of its own is left), the mean alone decides
    joined = np.full_like(small, 40.0)
    wide = xx >= 20 + yy
    joined[:, wide] = -1000.0
    joined[:, wide & (xx < 28 + yy)] = -690.0
    joined[:, 40:43, 20:95] = -850.0  # a thin band of air joining the lung to the corner's air
    joined[:, lung] = -850.0
    assert np.median(joined[joined < AIR_HU]) < OUTSIDE_AIR_HU < joined[joined < AIR_HU].mean()
    body = np.stack([_largest_filled(m) for m in joined > AIR_HU])
    assert find_lungs(joined, body, 2 * 2 * 5 / 1000)[:, lung].all()


def test_no_lungs_means_no_anatomy_and_every_candidate_is_kept():
    hu = np.full((6, 120, 120), -1000.0, np.float32)
    hu[:, _ellipse((120, 120), 60, 60, 50, 50)] = 40.0  # a water phantom: no lungs
    hu[:, 40:43, 40:43] = 400.0
    hu[:, 80:90, 80:90] = 800.0
    an = find_anatomy(hu, (3.0, 0.8, 0.8))
    assert not an.found
    c = cd.find_candidates(hu, (3.0, 0.8, 0.8))
    assert len(c) == 12 and cd.in_heart_region(c, an).all()


def test_a_chest_ct_is_cut_above_the_heart():
    """A scan longer than a cardiac scan (here 300 mm): slices far above the heart's levels
    (the aortic arch and the neck in a real chest CT) are no heart region."""
    hu, _ = _thorax(nz=60)
    hu[30:] = _thorax(nz=1)[0][0]
    # above slice 30 the heart gives way to two thin vessels in fat
    s = hu[30:].copy()
    heart = _ellipse(s.shape[1:], 95, 130, 45, 42)
    s[:, heart] = -100.0
    s[:, _ellipse(s.shape[1:], 80, 120, 10, 10)] = 40.0
    hu[30:] = s
    an = find_anatomy(hu, SPACING)
    assert an.heart_levels is not None and an.heart_levels[1] == 29
    assert an.region[:30].any(axis=(1, 2))[5:].all()
    assert not an.region[29 + 10:].any()  # 45 mm above the last heart level: 9 slices


def test_the_upper_abdomen_below_the_heart_is_no_heart_region():
    """Below the diaphragm only the lung bases remain, round the liver and stomach: a
    calcification there (e.g. the splenic artery) is not looked at."""
    hu, specks = _thorax(nz=30)
    s = np.full(hu.shape[1:], -1000.0, np.float32)
    s[_ellipse(s.shape, 100, 130, 92, 125)] = -100.0
    s[_ellipse(s.shape, 105, 130, 80, 110)] = 55.0  # liver, stomach, spleen
    s[_ellipse(s.shape, 150, 40, 18, 14)] = -850.0  # the lung bases, behind
    s[_ellipse(s.shape, 150, 220, 18, 14)] = -850.0
    _bone(s, 172, 130, 18, 20)
    s[99:102, 179:182] = 400.0  # a calcified abdominal artery
    hu[:6] = s
    an = find_anatomy(hu, SPACING)
    c = cd.find_candidates(hu, SPACING, centre_yx=(95.0, 130.0))
    keep = cd.in_heart_region(c, an)
    uid = c.ids[3, 100 - c.field.y0, 180 - c.field.x0]
    assert uid > 0 and not keep[np.flatnonzero(c.uid == uid)[0]]
    assert not an.region[:6].any()
    assert keep[_candidate_at(c, *specks["heart"])]  # the heart above is kept


@pytest.mark.parametrize("seed", [900017, 900022])
def test_synthetic_studies_keep_every_labelled_candidate_and_drop_bone(seed):
    """On held-out synthetic studies (known heart and bone): every candidate labelled as
    coronary calcium is in the region, none on a calcified structure leaving it; candidates of cortical bone (peak >= 450 HU, away from
    the heart) are not."""
    from scipy import ndimage

    from CoronaryCalciumDINOLib.synth.generator import generate_study

    st = generate_study(seed, matrix=256)
    an = find_anatomy(st.ct.hu, st.ct.spacing)
    assert an.found
    c = cd.find_candidates(st.ct.hu, st.ct.spacing)
    target = c.targets(st.labels)
    keep = cd.in_heart_region(c, an)
    assert (target > 0).sum() >= 20
    assert keep[target > 0].all()
    assert not cd.on_structure_leaving_region(c, st.ct.hu, an)[target > 0].any()
    peak = c.context[:, cd.CONTEXT_INDEX["peak_hu_k"]] * 1000.0
    near_heart = ndimage.binary_dilation(st.heart > 0, iterations=6)
    y = np.clip(np.round(c.cy + c.field.y0).astype(int), 0, st.ct.hu.shape[1] - 1)
    x = np.clip(np.round(c.cx + c.field.x0).astype(int), 0, st.ct.hu.shape[2] - 1)
    bone = (peak >= 450.0) & ~near_heart[c.z, y, x] & (target == 0)
    assert bone.sum() >= 30
    assert (~keep[bone]).mean() >= 0.95


def test_broad_plaques_of_a_synthetic_study_stay_in_the_region():
    """A synthetic study whose plaques are all broad (calcium filling the arteries, 110
    labelled candidates): every labelled candidate stays in the region and off any
    structure leaving it. Before calcification inside the lungs' hull was told from bone,
    51 of them were taken for bone."""
    from CoronaryCalciumDINOLib.synth.generator import generate_study

    st = generate_study(610002, matrix=256, broad_plaques=1.0, plaques=True)
    an = find_anatomy(st.ct.hu, st.ct.spacing)
    c = cd.find_candidates(st.ct.hu, st.ct.spacing)
    target = c.targets(st.labels)
    assert (target > 0).sum() >= 100
    keep = cd.in_heart_region(c, an) & ~cd.on_structure_leaving_region(c, st.ct.hu, an)
    assert keep[target > 0].all()


def _thorax_with_great_vessels():
    """The hand-drawn thorax, 200 mm long: the heart on slices 0-19, above it (slices 20-39)
    fat holding the ascending aorta (radius 15 mm, 5 mm right of the midline), the pulmonary
    trunk (12 mm, to its left and in front) and the superior vena cava (9 mm, 45 mm right of
    the midline)."""
    hu, _ = _thorax(nz=40)
    s = hu[20].copy()
    s[_ellipse(s.shape, 95, 130, 45, 42)] = -100.0
    s[_ellipse(s.shape, 82, 125, 15, 15)] = 40.0  # ascending aorta
    s[_ellipse(s.shape, 62, 158, 12, 12)] = 40.0  # pulmonary trunk
    s[_ellipse(s.shape, 88, 85, 9, 9)] = 40.0  # superior vena cava
    hu[20:] = s
    return hu


def test_the_ascending_aorta_is_found_above_the_heart_and_not_the_vena_cava():
    hu = _thorax_with_great_vessels()
    an = find_anatomy(hu, SPACING)
    assert an.heart_levels is not None and an.heart_levels[1] == 19
    assert an.aorta_axis is not None and an.aorta_axis.shape == (40, 2)
    for k in (19, 25, 35):  # at the root (top heart level) and above
        assert np.hypot(*(an.aorta_axis[k] - (82, 125))) <= 3.0, (k, an.aorta_axis[k])
    assert np.array_equal(an.aorta_axis[0], an.aorta_axis[19])  # below the root: the root's centre
    assert 12.0 <= an.aorta_radius_mm <= 17.0
    cropped = an.crop(10, 30)
    assert np.array_equal(cropped.aorta_axis, an.aorta_axis[10:30]) and cropped.aorta_radius_mm == an.aorta_radius_mm


def test_a_pulmonary_trunk_as_thick_as_the_aorta_is_not_taken_for_it():
    """A scan that ends 25 mm above the heart, before the pulmonary trunk turns back: the
    trunk (left of the aorta and in front, 2 mm wider: the thickest tube) runs as long as the
    aorta above the heart. Of two tubes that tie, the aorta is the one on the patient's right;
    a tube much thicker than the aorta would still be taken (not drawn here)."""
    hu, _ = _thorax(nz=26)
    s = hu[20].copy()
    s[_ellipse(s.shape, 95, 130, 45, 42)] = -100.0
    s[_ellipse(s.shape, 92, 112, 15, 15)] = 40.0  # ascending aorta, 18 mm right of the midline
    s[_ellipse(s.shape, 66, 152, 17, 17)] = 40.0  # pulmonary trunk, to its left and in front
    hu[20:] = s
    an = find_anatomy(hu, SPACING)
    assert an.heart_levels is not None and an.heart_levels[1] == 19
    assert an.aorta_axis is not None
    for k in (21, 25):
        assert np.hypot(*(an.aorta_axis[k] - (92, 112))) <= 3.0, (k, an.aorta_axis[k])
    assert 12.0 <= an.aorta_radius_mm <= 17.0


def test_a_short_deep_blob_above_the_heart_is_not_a_heart_level():
    """On a noisy low-dose slice the great vessels and the fat between them can merge into a
    blob as deep as the heart's: one such slice, 70 mm above the heart, must not become the
    top heart level (the aorta would then be looked for above the scan's end)."""
    hu = _thorax_with_great_vessels()
    hu[33][_ellipse(hu.shape[1:], 82, 130, 38, 40) & (hu[33] > -500)] = 40.0
    an = find_anatomy(hu, SPACING)
    assert an.heart_levels == (0, 19)
    assert an.aorta_axis is not None and np.hypot(*(an.aorta_axis[25] - (82, 125))) <= 3.0


def test_heart_levels_keep_the_long_run_and_a_lone_short_one():
    soft = np.zeros((30, 100, 100), bool)
    soft[2:20, 10:90, 10:90] = True  # the heart: 18 slices of 3 mm
    soft[25, 10:90, 10:90] = True  # one deep slice 15 mm above it
    soft[21, 10:90, 10:90] = True  # a deep slice 3 mm above a gap of 1 slice: the same run
    levels = heart_levels(soft, 1.0, 3.0)
    assert np.flatnonzero(levels).tolist() == list(range(2, 20)) + [21]
    only_short = np.zeros_like(soft)
    only_short[5:7, 10:90, 10:90] = True  # a scan whose only deep levels are short keeps them
    assert np.flatnonzero(heart_levels(only_short, 1.0, 3.0)).tolist() == [5, 6]


def test_no_aorta_without_the_slices_above_the_heart():
    """A scan that ends 10 mm above the heart's top level: the aorta cannot be told from the
    heart (nor on a phantom without lungs)."""
    hu = _thorax_with_great_vessels()[:22]
    an = find_anatomy(hu, SPACING)
    assert an.found and an.aorta_axis is None and an.aorta_radius_mm is None
    no_lungs = np.full((6, 120, 120), 40.0, np.float32)
    assert find_anatomy(no_lungs, (3.0, 0.8, 0.8)).aorta_axis is None


def _aorta_errors_mm(seed: int) -> np.ndarray | None:
    """A synthetic study's aorta as found against the generator's own ascending aorta: the
    distance (mm) between the found centre and the true centreline on each slice from the
    aortic root up (None: not found)."""
    from CoronaryCalciumDINOLib.synth import anatomy as synth_anatomy
    from CoronaryCalciumDINOLib.synth.generator import render_study

    r = render_study(seed, plaques=False)
    an = find_anatomy(np.asarray(r.study.ct.hu, np.float32), r.study.ct.spacing)
    if an.aorta_axis is None:
        return None
    g = r.grid
    line = dict((name, pts) for name, pts, _ in synth_anatomy.great_vessels(r.anatomy))["ascending_aorta"]
    z_mm = g.origin[2] + g.dz * np.arange(g.nz)
    true = np.stack([(np.interp(z_mm, line[:, 2], line[:, 1]) - g.origin[1]) / g.pixel,
                     (np.interp(z_mm, line[:, 2], line[:, 0]) - g.origin[0]) / g.pixel], axis=1)
    above_root = z_mm >= line[0, 2]
    return np.hypot(*((an.aorta_axis - true)[above_root] * g.pixel).T)


@pytest.mark.parametrize("seed", [109, 121])
def test_the_aorta_of_synthetic_studies_is_found_where_the_generator_put_it(seed):
    """Synthetic studies (their scanners' slices 1.5-3 mm, noise and all) whose ascending
    aorta the generator knows (109: 35 mm right of the midline, beside a vena cava of 10 mm;
    121: a big blob of the heart's top beside it): found, its centre within 5 mm of the true
    centreline on half the slices from the root up, never 15 mm off (the pulmonary trunk, the
    vena cava and the atria are 25-45 mm away)."""
    err = _aorta_errors_mm(seed)
    assert err is not None and err.size >= 5
    assert np.median(err) <= 5.0 and err.max() <= 15.0, (np.median(err), err.max())


@pytest.mark.slow
def test_the_aorta_of_40_synthetic_studies():
    """Seeds 100-139: found within 5 mm (median over its slices) on at least 38 (39 when
    this was written; the finder of the previous commit: 23)."""
    errors = {seed: _aorta_errors_mm(seed) for seed in range(100, 140)}
    medians = {seed: (np.inf if e is None else float(np.median(e))) for seed, e in errors.items()}
    good = [seed for seed, m in medians.items() if m <= 5.0]
    assert len(good) >= 38, {seed: round(m, 1) for seed, m in medians.items() if m > 5.0}
