"""Thoracic anatomy of a synthetic non-contrast cardiac CT: sampling and painting.

Coordinates are LPS millimetres in a patient frame whose axial origin is the centre of the
body ellipse and whose z = 0 is the level of the atrioventricular (AV) plane centre.
Painting order: thorax template (body wall, lungs, spine, posterior mediastinum,
sternum), ribs, diaphragm domes (liver, spleen/stomach), lung vessels and bronchi, then
the heart with its fat, chambers and great vessels (:func:`paint_heart`). Coronary
vessels are painted by :mod:`.coronaries`.
"""

from __future__ import annotations

import numpy as np

from .render import Grid, blend, ellipsoid_bounds, paint_ellipse, paint_ellipsoid, tube_coverage

LUNG_MASK_BELOW = -500.0  # HU below which a voxel counts as lung/air when painting over it
SOFT_BELOW = 150.0  # heart structures never paint over denser voxels (bone)
LA_SEMI = (31.0, 16.0, 22.0)  # left atrium semi-axes (x, y, z) mm
#: Angle round the chest wall (degrees from the front) where the costal cartilages start:
#: they reach close to the sternum's edge.
CARTILAGE_FROM_DEG = 12.0


def unit(v) -> np.ndarray:
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def sample_anatomy(rng: np.random.Generator) -> dict:
    """Draw one patient's anatomy (all lengths in mm, densities in HU)."""
    A = rng.uniform(145, 195)  # body lateral semi-axis
    B = A * rng.uniform(0.62, 0.74)  # body AP semi-axis
    size = (A - 145) / 50  # 0 small .. 1 large patient
    fat = rng.uniform(4, 12) + size * rng.uniform(5, 22)
    muscle = rng.uniform(7, 13)
    a = {
        "body_semi": [A, B],
        "subcutaneous_fat_mm": fat,
        "muscle_mm": muscle,
        "fat_hu": rng.uniform(-110, -85),
        "muscle_hu": rng.uniform(45, 60),
        "lung_hu": rng.uniform(-880, -830),
        "blood_hu": rng.uniform(36, 50),
        "myocardium_delta_hu": rng.uniform(5, 12),
        "liver_hu": rng.uniform(52, 68),
        "cortical_hu": rng.uniform(700, 1000),
        "trabecular_hu": rng.uniform(180, 300),
        "rib_marrow_hu": rng.uniform(150, 300),
    }
    cav_a = A - fat - muscle - 4
    cav_b = B - fat * 0.8 - muscle - 3
    a["cavity_semi"] = [cav_a, cav_b]
    a["cavity_cy"] = rng.uniform(2, 8)
    # Spine: vertebral body centre in the posterior midline, indenting the cavity.
    vb = [rng.uniform(18, 23), rng.uniform(14, 18)]
    a["vertebra_semi"] = vb
    a["vertebra_y"] = a["cavity_cy"] + cav_b - vb[1] - rng.uniform(24, 32)
    a["vertebra_period_mm"] = rng.uniform(26, 31)
    a["disc_mm"] = rng.uniform(5, 8)
    a["vertebra_phase_mm"] = rng.uniform(0, a["vertebra_period_mm"])
    a["desc_aorta"] = [rng.uniform(20, 28), a["vertebra_y"] - vb[1] - rng.uniform(2, 7), rng.uniform(10, 13.5)]
    a["esophagus"] = [rng.uniform(-2, 6), a["vertebra_y"] - vb[1] - rng.uniform(6, 10)]
    # Heart: ventricular ellipsoid with long axis towards the apex (left, anterior, inferior).
    az = rng.uniform(35, 60)  # degrees from anterior towards the left
    el = rng.uniform(25, 45)  # degrees below the axial plane
    aL = rng.uniform(60, 70)
    semi = [aL, rng.uniform(47, 56), rng.uniform(60, 70)]  # along L, anterior, left
    L = np.array([np.sin(np.deg2rad(az)) * np.cos(np.deg2rad(el)),
                  -np.cos(np.deg2rad(az)) * np.cos(np.deg2rad(el)),
                  -np.sin(np.deg2rad(el))])
    u_av = -0.6 * aL
    # AV-plane centre (the heart's base) at z = 0, slightly left of the midline.
    base = np.array([rng.uniform(0, 14), a["cavity_cy"] - 0.3 * cav_b + rng.uniform(-6, 6), 0.0])
    c_v = base - u_av * L
    # Slide the heart forwards until its pericardium (nearly) touches the anterior chest wall.
    fat_mm = rng.uniform(0.5, 2.5) + size * 2.0
    axes = np.stack([L, unit(np.array([0, -1.0, 0]) - (-L[1]) * L), np.zeros(3)], axis=1)
    axes[:, 2] = np.cross(axes[:, 0], axes[:, 1])
    lo, hi = ellipsoid_bounds(c_v, axes, np.asarray(semi) + fat_mm + 1.2, 0.0)
    wall_y = a["cavity_cy"] - cav_b * (1 - min(abs(c_v[0]) / cav_a, 0.9) ** 2.2) ** (1 / 2.2)
    # A heart too deep for this chest is scaled down to fit between the wall and the oesophagus.
    room = (a["esophagus"][1] - 10.0) - (wall_y + 1.0)
    if hi[1] - lo[1] > room:
        k = max(room / (hi[1] - lo[1]), 0.7)
        semi = [v * k for v in semi]
        aL, u_av = semi[0], -0.6 * semi[0]
        c_v = base - u_av * L
        lo, _ = ellipsoid_bounds(c_v, axes, np.asarray(semi) + fat_mm + 1.2, 0.0)
    shift = wall_y + rng.uniform(1.0, 8.0) - lo[1]
    base[1] += shift
    c_v[1] += shift
    a.update({"heart_azimuth_deg": az, "heart_elevation_deg": el, "heart_semi": semi,
              "heart_centre": c_v.tolist(), "av_u": u_av,
              "epicardial_fat_mm": fat_mm,
              "aorta_radius": rng.uniform(13, 17), "pa_radius": rng.uniform(11, 14)})
    return a


def heart_frame(a: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(centre, L, e_ant, e_left): ventricle centre, long axis to the apex, and two normals."""
    az, el = np.deg2rad(a["heart_azimuth_deg"]), np.deg2rad(a["heart_elevation_deg"])
    L = np.array([np.sin(az) * np.cos(el), -np.cos(az) * np.cos(el), -np.sin(el)])
    ant = np.array([0.0, -1.0, 0.0])
    e_ant = unit(ant - ant.dot(L) * L)
    e_left = np.cross(L, e_ant)
    if e_left[0] < 0:
        e_left = -e_left
    return np.asarray(a["heart_centre"], float), L, e_ant, e_left


def heart_axes(a: dict) -> np.ndarray:
    _, L, e_ant, e_left = heart_frame(a)
    return np.stack([L, e_ant, e_left], axis=1)


def surface_point(a: dict, u: float, phi_deg: float, offset: float = 0.0) -> np.ndarray:
    """Point on the ventricular ellipsoid at axial position ``u`` and azimuth ``phi``, pushed
    ``offset`` mm outwards. ``phi`` 0 is anterior, +90 left, -90 right, +-180 posterior."""
    c, L, e_ant, e_left = heart_frame(a)
    aL, b_ant, b_left = a["heart_semi"]
    phi = np.deg2rad(phi_deg)
    k = np.sqrt(max(1.0 - (u / aL) ** 2, 0.0))
    rho = k / np.sqrt((np.cos(phi) / b_ant) ** 2 + (np.sin(phi) / b_left) ** 2)
    d = np.cos(phi) * e_ant + np.sin(phi) * e_left
    return c + u * L + (rho + offset) * d


def landmarks(a: dict) -> dict:
    """Named points derived from the heart: AV-plane centre, aortic root, atria, great vessels."""
    c, L, e_ant, e_left = heart_frame(a)
    base = c + a["av_u"] * L
    ao = base + np.array([-6.0, -6.0, 16.0])
    # The left atrium lies in front of the oesophagus, never inside it or the spine.
    la_y = min(base[1] + 24.0, a["esophagus"][1] - 7.0 - LA_SEMI[1])
    return {
        "base": base,
        "aortic_root": ao,
        "la": np.array([base[0] + 8.0, la_y, base[2] + 12.0]),
        "ra": base + np.array([-36.0, 6.0, 4.0]),
        "rvot": base + np.array([16.0, -22.0, 18.0]),
    }


def great_vessels(a: dict) -> list[tuple[str, np.ndarray, float]]:
    """Centrelines (polyline points) and radii of the great vessels seen on cardiac slices."""
    lm = landmarks(a)
    ao, rvot = lm["aortic_root"], lm["rvot"]
    r_ao, r_pa = a["aorta_radius"], a["pa_radius"]
    asc = np.array([ao, ao + [-5, -6, 30], ao + [-8, -4, 70], ao + [-8, 0, 140]])
    pa = np.array([rvot, rvot + [4, 6, 22], rvot + [6, 20, 40], rvot + [30, 40, 46]])
    rpa = np.array([rvot + [6, 20, 40], rvot + [-20, 32, 42], rvot + [-60, 40, 40]])
    svc = np.array([lm["ra"] + [-2, -4, 10], lm["ra"] + [-4, -2, 60], lm["ra"] + [-4, 0, 160]])
    ivc = np.array([lm["ra"] + [4, 10, -10], lm["ra"] + [12, 18, -60], lm["ra"] + [14, 22, -200]])
    return [("ascending_aorta", asc, r_ao), ("pulmonary_trunk", pa, r_pa), ("right_pa", rpa, r_pa * 0.75),
            ("svc", svc, r_ao * 0.65), ("ivc", ivc, r_ao * 0.8)]


def thorax_template(grid: Grid, a: dict, edge: float) -> tuple[np.ndarray, np.ndarray, tuple]:
    """2D HU template of the thorax wall, lungs, spine and posterior mediastinum.

    Returns ``(with_vertebral_body, with_disc, spine_box)``: two versions of the slice
    (through a vertebral body / through an intervertebral disc) differing only inside
    ``spine_box`` (y, x index slices).
    """
    A, B = a["body_semi"]
    fat, mus = a["subcutaneous_fat_mm"], a["muscle_mm"]
    hu = np.full((grid.n, grid.n), -1000.0, dtype=np.float32)
    paint_ellipse(hu, grid, 0, 0, A, B, 30.0, edge, power=2.3)  # skin
    paint_ellipse(hu, grid, 0, 0, A - 1.8, B - 1.8, a["fat_hu"], edge, power=2.3)
    paint_ellipse(hu, grid, 0, 0, A - 1.8 - fat, B - 1.8 - 0.8 * fat, a["muscle_hu"], edge, power=2.3)
    # Thin fat plane between the chest-wall muscles and the ribs.
    ca, cb = a["cavity_semi"]
    cy = a["cavity_cy"]
    paint_ellipse(hu, grid, 0, cy, ca + 3, cb + 2.5, a["fat_hu"] + 20, edge, power=2.2)
    paint_ellipse(hu, grid, 0, cy, ca + 1.5, cb + 1.2, a["muscle_hu"] - 5, edge, power=2.2)
    # Lungs: denser towards the dependent (posterior) side.
    lung = np.broadcast_to(a["lung_hu"] + 60.0 * np.clip((grid.y[:, None] - (cy - cb)) / (2 * cb), 0, 1), hu.shape)
    paint_ellipse(hu, grid, 0, cy, ca, cb, lung, edge, power=2.2)
    # Spine with paraspinal muscles indenting the cavity posteriorly.
    vy = a["vertebra_y"]
    vw, vh = a["vertebra_semi"]
    paint_ellipse(hu, grid, 0, vy + 22, vw + 12, vh + 22, a["muscle_hu"], edge)
    # Posterior mediastinum: fat around the descending aorta, oesophagus and azygos vein.
    dax, day, dar = a["desc_aorta"]
    ex, ey = a["esophagus"]
    paint_ellipse(hu, grid, (dax + ex) / 2 - 2, (day + ey) / 2, dar + 16, dar + 9, a["fat_hu"], edge)
    paint_ellipse(hu, grid, dax, day, dar + 1.2, dar + 1.2, 55.0, edge)  # aortic wall
    paint_ellipse(hu, grid, dax, day, dar, dar, a["blood_hu"], edge)
    paint_ellipse(hu, grid, ex, ey, 8, 6, 35.0, edge)
    paint_ellipse(hu, grid, -vw * 0.55, vy - vh - 2, 3.5, 3.5, a["blood_hu"], edge)
    # Sternum in the anterior wall.
    sy = -(B - 1.8 - 0.8 * fat - mus * 0.55)
    paint_ellipse(hu, grid, 0, sy, 15, 6.5, a["cortical_hu"] * 0.8, edge)
    paint_ellipse(hu, grid, 0, sy, 13.5, 5.0, a["rib_marrow_hu"], edge)
    # Posterior elements of the vertebra (present in both versions).
    ct = 1.6
    canal_y = vy + vh + 8
    paint_ellipse(hu, grid, 0, canal_y + 1, 14, 12, a["cortical_hu"] * 0.75, edge)
    for s in (-1, 1):
        paint_ellipse(hu, grid, s * (vw + 6), vy + vh + 3, 13, 4.5, a["cortical_hu"] * 0.7, edge, angle_deg=s * 25)
    paint_ellipse(hu, grid, 0, canal_y + 22, 4, 12, a["cortical_hu"] * 0.7, edge)
    paint_ellipse(hu, grid, 0, canal_y, 8, 7.5, 20.0, edge)  # canal / cord
    spine_box = (grid.index_range(vy - vh - 4, vy + vh + 4, 1), grid.index_range(-vw - 4, vw + 4, 2))
    disc = hu.copy()
    paint_ellipse(hu, grid, 0, vy, vw, vh, a["cortical_hu"], edge)
    paint_ellipse(hu, grid, 0, vy, vw - ct, vh - ct, a["trabecular_hu"], edge)
    paint_ellipse(disc, grid, 0, vy, vw, vh, 85.0, edge)
    return hu, disc, spine_box


def disc_weight(z: np.ndarray, a: dict, thickness: float) -> np.ndarray:
    """Fraction of each slice's thickness that lies in an intervertebral disc."""
    period, d, phase = a["vertebra_period_mm"], a["disc_mm"], a["vertebra_phase_mm"]
    sub = np.linspace(-0.5, 0.5, 9)[None, :] * thickness + z[:, None]
    pos = np.mod(sub - phase, period)
    return (pos < d).mean(axis=1)


def paint_ribs(vol: np.ndarray, grid: Grid, a: dict, rng: np.random.Generator, edge: float,
               cartilage: list | None = None) -> None:
    """Rib cross-sections along the cavity wall (bone posteriorly/laterally, cartilage anteriorly).

    ``cartilage`` (a list) receives each costal cartilage cross-section painted, as
    ``(slice, cx, cy, half_length, half_thickness, angle_deg)`` (for
    :func:`paint_cartilage_calcification`)."""
    ca, cb = a["cavity_semi"]
    cy = a["cavity_cy"]
    period = rng.uniform(30, 36)
    slope = rng.uniform(55, 75)  # mm of z per radian of angle around the wall
    phase = {s: rng.uniform(0, period) for s in (-1, 1)}
    cort, marrow = a["cortical_hu"], a["rib_marrow_hu"]
    for k, z in enumerate(grid.z):
        for s in (-1, 1):
            # Rib m crosses the slice at angle theta with z = phase + m * period + slope * (theta - pi).
            m_lo = int(np.floor((z - phase[s] - slope * (np.deg2rad(170) - np.pi)) / period)) - 1
            m_hi = int(np.ceil((z - phase[s] - slope * (np.deg2rad(CARTILAGE_FROM_DEG) - np.pi)) / period)) + 1
            for m in range(m_lo, m_hi + 1):
                theta = np.pi + (z - phase[s] - m * period) / slope
                if not np.deg2rad(CARTILAGE_FROM_DEG) <= theta <= np.deg2rad(170):
                    continue
                px, py = s * ca * np.sin(theta), cy - cb * np.cos(theta)
                tx, ty = s * ca * np.cos(theta), cb * np.sin(theta)
                nrm = np.hypot(tx, ty)
                # Outward normal of the wall, to sit the rib just outside the cavity.
                nx, ny = ty / nrm * s, -tx / nrm * s
                if nx * px + ny * py < 0:
                    nx, ny = -nx, -ny
                half_len = float(np.clip(5.0 * nrm / slope, 5.0, 16.0))
                half_thk = 3.6
                cx, cyy = px + nx * (half_thk - 0.5), py + ny * (half_thk - 0.5)
                ang = np.rad2deg(np.arctan2(ty, tx))
                is_cartilage = theta < np.deg2rad(50)
                img = vol[k]
                paint_ellipse(img, grid, cx, cyy, half_len, half_thk, 110.0 if is_cartilage else cort, edge,
                              angle_deg=ang)
                if is_cartilage and cartilage is not None:
                    cartilage.append((k, cx, cyy, half_len, half_thk, ang))
                if not is_cartilage:
                    paint_ellipse(img, grid, cx, cyy, half_len - 1.4, half_thk - 1.4, marrow, edge, angle_deg=ang)


def paint_cartilage_calcification(vol: np.ndarray, grid: Grid, a: dict, cartilage: list,
                                  rng: np.random.Generator, edge: float) -> int:
    """Calcified costal cartilage, as in older patients: in a share ``a["cartilage_calcified"]``
    of the cartilage cross-sections, 1-3 specks of 1-4 mm at 200-900 HU, mostly at the
    cartilage's rim (peripheral calcification) and some in its core. Returns how many.

    On real CT they sit in the chest wall beside the sternum, just in front of the heart,
    and look like coronary calcium on one slice: the networks must learn them as negatives.
    """
    share = float(a.get("cartilage_calcified", 0.0))
    n = 0
    for k, cx, cy, half_len, half_thk, ang in cartilage:
        if rng.random() >= share:
            continue
        t = np.deg2rad(ang)
        for _ in range(int(rng.integers(1, 4))):
            u = rng.uniform(-0.9, 0.9) * half_len
            v = rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.0) * half_thk if rng.random() < 0.7 \
                else rng.uniform(-0.4, 0.4) * half_thk
            px = cx + u * np.cos(t) - v * np.sin(t)
            py = cy + u * np.sin(t) + v * np.cos(t)
            r = rng.uniform(0.5, 2.0)
            paint_ellipse(vol[k], grid, px, py, r, r * rng.uniform(0.6, 1.0), float(rng.uniform(200, 900)), edge,
                          angle_deg=float(rng.uniform(0, 180)))
            n += 1
    return n


def paint_diaphragm(vol: np.ndarray, grid: Grid, a: dict, edge: float) -> None:
    """Liver dome (right) and spleen/stomach dome (left) replacing lung at the lowest slices."""
    c, L, _, _ = heart_frame(a)
    aL = a["heart_semi"][0]
    apex_z = (c + aL * L)[2]
    eye = np.eye(3)
    ca, cb = a["cavity_semi"]
    paint_ellipsoid(vol, grid, [-0.35 * ca, a["cavity_cy"] + 10, apex_z + 5 - 80], eye, [ca * 0.9, cb * 1.1, 80],
                    a["liver_hu"], edge, where_below=LUNG_MASK_BELOW)
    paint_ellipsoid(vol, grid, [0.45 * ca, a["cavity_cy"] + 20, apex_z - 12 - 70], eye, [ca * 0.7, cb * 0.9, 70],
                    45.0, edge, where_below=LUNG_MASK_BELOW)


def lung_vessel_tree(a: dict, rng: np.random.Generator) -> tuple[list, list]:
    """Branching pulmonary vessels and main bronchi from both hila.

    Returns two lists of (points, radii) tubes: vessels, bronchi.
    """
    base = landmarks(a)["base"]
    ca, _ = a["cavity_semi"]
    vessels, bronchi = [], []

    def grow(p, d, r, depth, bronchus):
        length = rng.uniform(12, 28) * (0.55 + 0.45 * r / 4.5)
        q = p + d * length
        vessels.append((np.array([p, q]), np.array([r, r * 0.88])))
        if bronchus:
            side = unit(np.cross(d, [0.0, 0.0, 1.0]) + 1e-6)
            bronchi.append((np.array([p, q]) + 1.1 * r * side, np.array([r, r * 0.88]) * 0.95))
        if depth == 0 or r < 0.7:
            return
        for _ in range(2):
            nd = unit(d + rng.normal(0, 0.6, 3))
            grow(q, nd, r * rng.uniform(0.66, 0.8), depth - 1, bronchus and r > 3.0 and rng.random() < 0.6)

    for s in (-1, 1):
        hilum = base + np.array([s * 0.4 * ca, 26.0, 18.0 if s > 0 else 12.0])
        for lobe_dir in ([s, 0.2, 0.9], [s, 0.1, 0.1], [s, -0.5, 0.0], [s * 0.8, 0.6, -0.8], [s * 0.6, -0.6, -0.5]):
            grow(hilum, unit(np.asarray(lobe_dir, float) + rng.normal(0, 0.15, 3)), rng.uniform(3.5, 5.0), 6, True)
    # Peripheral vessels: short thin segments scattered through both lungs.
    ca, cb = a["cavity_semi"]
    n_small = int(rng.integers(400, 700))
    centres = np.stack([rng.uniform(-0.95, 0.95, n_small) * ca,
                        a["cavity_cy"] + rng.uniform(-0.95, 0.95, n_small) * cb,
                        base[2] + rng.uniform(-110, 70, n_small)], axis=1)
    dirs = rng.normal(size=(n_small, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    half = rng.uniform(2.0, 7.0, n_small)[:, None] * dirs
    radii = rng.uniform(0.5, 1.4, n_small)
    for c0, h, r in zip(centres, half, radii):
        vessels.append((np.array([c0 - h, c0 + h]), np.array([r, r])))
    return vessels, bronchi


def paint_lung_vessels(vol: np.ndarray, grid: Grid, a: dict, rng: np.random.Generator, edge: float) -> None:
    """Paint the pulmonary vessels (blood) and bronchi (air with a soft-tissue wall) over lung only."""
    vessels, bronchi = lung_vessel_tree(a, rng)
    res = tube_coverage(grid, vessels, edge, seg_len=8.0)
    if res is not None:
        box, cov = res
        sub = vol[box]
        blend(sub, cov * (sub < LUNG_MASK_BELOW), a["blood_hu"])
    res = tube_coverage(grid, bronchi, edge) if bronchi else None
    if res is not None:
        box, cov = res
        sub = vol[box]
        lungish = sub < LUNG_MASK_BELOW
        blend(sub, cov * lungish, 20.0)
        inner = tube_coverage(grid, [(p, np.maximum(r - 1.2, 0.4)) for p, r in bronchi], edge)
        if inner is not None:
            ibox, icov = inner
            rel = tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(ibox, box))
            blend(vol[ibox], icov * lungish[rel], -950.0)


def paint_heart(vol: np.ndarray, heart: np.ndarray, grid: Grid, a: dict, edge: float) -> None:
    """Pericardial sac, epicardial fat, ventricles, atria and great vessels; fills ``heart``."""
    c, L, e_ant, e_left = heart_frame(a)
    axes = heart_axes(a)
    semi = np.asarray(a["heart_semi"], float)
    blood, myo, fat = a["blood_hu"], a["blood_hu"] + a["myocardium_delta_hu"], a["fat_hu"]
    lm = landmarks(a)
    f = a["epicardial_fat_mm"]
    eye = np.eye(3)

    def ell(centre, ax, s, value, where_below=SOFT_BELOW, mask=False):
        paint_ellipsoid(vol, grid, centre, ax, s, value, edge, where_below, heart if mask else None)

    # Mediastinal fat around the great vessels, then the pericardial sac (thin line) and fat.
    res = tube_coverage(grid, [(pts, r + 6.0) for _, pts, r in great_vessels(a)], edge, seg_len=10.0)
    if res is not None:
        box, cov = res
        sub = vol[box]
        blend(sub, cov * (sub < LUNG_MASK_BELOW), fat)
    ell(lm["la"], eye, np.add(LA_SEMI, 5.0), fat, where_below=LUNG_MASK_BELOW)
    ell(c, axes, semi + f + 1.2, 25.0, where_below=LUNG_MASK_BELOW)
    ell(c, axes, semi + f, fat, mask=True)
    # Atria (thin walls: blood density) and ventricles.
    ell(lm["la"], eye, LA_SEMI, blood, mask=True)
    ell(lm["ra"], eye, [24, 25, 30], blood, mask=True)
    ell(c, axes, semi, myo)
    # LV cavity (left-posterior, towards the apex) and RV cavity (anterior-right).
    ell(c + 0.12 * semi[0] * L + 0.22 * semi[2] * e_left - 0.1 * semi[1] * e_ant, axes,
        semi * np.array([0.72, 0.5, 0.48]), blood)
    ell(c - 0.05 * semi[0] * L + 0.55 * semi[1] * e_ant - 0.35 * semi[2] * e_left, axes,
        semi * np.array([0.7, 0.32, 0.5]), blood)
    # Great vessels: thin wall then blood.
    for _, pts, r in great_vessels(a):
        for radius, value in ((r + 1.2, 55.0), (r, blood)):
            res = tube_coverage(grid, [(pts, radius)], edge, seg_len=10.0)
            if res is not None:
                box, cov = res
                sub = vol[box]
                blend(sub, cov * (sub < SOFT_BELOW), value)
