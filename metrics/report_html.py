"""``report.html``: the evaluation as a page to look at (plots, best/worst galleries, a sortable per-image table).

Written by ``evaluate.py`` beside ``metrics.json`` (one experiment) and as ``report_<phase>_<epoch>.html`` in a results
root (several experiments side by side). The page works offline from ``file://``: plots are matplotlib PNGs next to
the page (Agg backend, 120 dpi, usable in papers), images are linked relative to the page, and the table sorting is a
few lines of plain JavaScript inside the page (no CDN, no library).

Plots of one run:

- ``report_by_level.png``: per-HER2-level box plots of per-image PSNR and SSIM, every image drawn as a jittered point;
- ``report_iod.png``: virtual vs real DAB IOD per image with the least-squares line (``numpy.polyfit``, degree 1),
  the identity line, and Pearson r with its 95 % intervals from metrics.json (bootstrap; Fisher z). When the images
  differ in size the axes are the mean OD (IOD per pixel), as in metrics.json's ``iod_basis``;
- ``report_psnr_hist.png``: histogram of per-image PSNR (finite values; identical pairs are counted in the title).

Galleries: the ``n`` best and ``n`` worst images by PSNR (identical pairs count as best), each row H&E | virtual IHC |
real IHC with the image's PSNR, SSIM and HER2 level. Every text goes through dominate's escaping and every link through
:func:`util.html.url_for`; the only unescaped text is the constant script :data:`SORT_JS`, which holds no data.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from metrics.scoring import PairScore
from util.fileio import atomic_write, atomic_write_text
from util.html import url_for, visual_label

PathLike = Union[str, os.PathLike]
DPI = 120
GALLERY_N = 8

#: Table sorting: a click on a header sorts by that column (numbers by ``data-v``, else text), a second click reverses.
SORT_JS = """
function sortTable(table, col, numeric) {
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var dir = table.getAttribute('data-sort-col') === String(col) && table.getAttribute('data-sort-dir') === 'asc'
    ? 'desc' : 'asc';
  rows.sort(function (a, b) {
    var x = a.cells[col].getAttribute('data-v'), y = b.cells[col].getAttribute('data-v');
    var c = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
    if (isNaN(c)) { c = 0; }
    return dir === 'asc' ? c : -c;
  });
  rows.forEach(function (r) { body.appendChild(r); });
  table.setAttribute('data-sort-col', String(col));
  table.setAttribute('data-sort-dir', dir);
}
document.addEventListener('DOMContentLoaded', function () {
  document.querySelectorAll('table.sortable').forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.style.cursor = 'pointer';
      th.title = 'click to sort';
      th.addEventListener('click', function () { sortTable(table, col, th.getAttribute('data-type') === 'num'); });
    });
  });
});
"""
assert "</" not in SORT_JS  # cannot close the <script> element

CSS = ("body{font-family:sans-serif;margin:16px;max-width:1400px}table{border-collapse:collapse;margin:8px 0}"
       "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f3f3f3}"
       "td.t,th.t{text-align:left}.gallery td{text-align:center;border:none}.gallery img{width:200px}"
       "img.plot{max-width:100%}.note{color:#555;font-size:90%}.side{display:flex;flex-wrap:wrap;gap:12px}")


# ------------------------------------------------------------------------------------------------------------ plots
def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        from util.errors import OptionError

        raise OptionError("report.html needs matplotlib: pip install matplotlib==3.11.2 (or pass --no_report)") from e

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=DPI, bbox_inches="tight"))
    _pyplot().close(fig)
    return path


def _levels(scores: Sequence[PairScore]) -> List[Tuple[str, List[PairScore]]]:
    from data.her2 import HER2_LEVELS  # imported here: the data package imports torch (see metrics.scoring)

    groups = [(lv, [s for s in scores if s.her2 == lv]) for lv in HER2_LEVELS]
    unknown = [s for s in scores if s.her2 is None]
    if unknown:
        groups.append(("unknown", unknown))
    return groups


def _box_strip(ax, groups: List[Tuple[str, List[float]]], ylabel: str, title: str) -> None:
    rng = np.random.default_rng(0)  # jitter only; fixed so that the PNG is reproducible
    data = [np.asarray(v, dtype=float) for _, v in groups]
    pos = np.arange(1, len(groups) + 1)
    nonempty = [(p, d) for p, d in zip(pos, data) if d.size]
    if nonempty:
        ax.boxplot([d for _, d in nonempty], positions=[p for p, _ in nonempty], widths=0.5, showfliers=False)
        for p, d in nonempty:
            ax.plot(p + rng.uniform(-0.15, 0.15, d.size), d, "o", ms=3, alpha=0.6, color="tab:blue")
    ax.set_xticks(pos)
    ax.set_xticklabels([f"{lv}\n(n={d.size})" for (lv, _), d in zip(groups, data)])
    ax.set_xlabel("HER2 level")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)


def plot_by_level(scores: Sequence[PairScore], path: Path, title: str = "") -> Path:
    """Box + strip plots of per-image PSNR (finite) and SSIM per HER2 level -> PNG at ``path``."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    groups = _levels(scores)
    _box_strip(axes[0], [(lv, [s.psnr for s in g if math.isfinite(s.psnr)]) for lv, g in groups], "PSNR (dB)",
               f"{title} PSNR per HER2 level".strip())
    _box_strip(axes[1], [(lv, [s.ssim for s in g]) for lv, g in groups], "SSIM",
               f"{title} SSIM per HER2 level".strip())
    fig.tight_layout()
    return _save(fig, path)


def iod_values(scores: Sequence[PairScore], summary: dict) -> Tuple[np.ndarray, np.ndarray, str]:
    """``(real, virtual, unit)`` used for the IOD agreement: per-image IOD, or mean OD when sizes differ
    (follows ``summary['iod_basis']``)."""
    stain = [s for s in scores if math.isfinite(s.iod_real) and math.isfinite(s.iod_fake)]
    if str(summary.get("iod_basis", "")).startswith("mean_od"):
        return (np.array([s.dab_mean_od_real for s in stain]), np.array([s.dab_mean_od_fake for s in stain]),
                "mean DAB OD (IOD per pixel)")
    return np.array([s.iod_real for s in stain]), np.array([s.iod_fake for s in stain]), "DAB IOD (OD*px)"


def _ci(ci, spec=".3f") -> str:
    return "n/a" if not ci else f"[{format(ci[0], spec)}, {format(ci[1], spec)}]"


def r_text(summary: dict) -> str:
    """``'r = 0.912, 95 % CI [0.80, 0.96] (bootstrap), [0.78, 0.97] (Fisher z)'`` or ``'r undefined'``."""
    r = summary.get("iod_pearson_r")
    if r is None:
        note = summary.get("iod_pearson_r_note")
        return f"r not reported: {note}" if note else "r undefined (fewer than 3 images or a constant sample)"
    return (f"r = {r:.3f}, 95 % CI {_ci(summary.get('iod_pearson_r_ci95'))} (bootstrap), "
            f"{_ci(summary.get('iod_pearson_r_ci95_fisher'))} (Fisher z)")


def plot_iod(scores: Sequence[PairScore], summary: dict, path: Path, title: str = "") -> Path:
    """Scatter of virtual vs real IOD with the fitted line, the identity and r with its CI -> PNG at ``path``."""
    plt = _pyplot()
    x, y, unit = iod_values(scores, summary)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(x, y, s=14, alpha=0.7, label="images")
    if x.size:
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        ax.plot([lo, hi], [lo, hi], "--", color="grey", lw=1, label="identity")
        if x.size >= 2 and np.ptp(x) > 0 and summary.get("iod_pearson_r") is not None:  # no line without an r
            slope, icpt = np.polyfit(x, y, 1)
            xs = np.array([x.min(), x.max()])
            ax.plot(xs, slope * xs + icpt, color="tab:red", lw=1.5,
                    label=f"fit: y = {slope:.3g} x + {icpt:.3g}")
    ax.set_xlabel(f"real IHC {unit}")
    ax.set_ylabel(f"virtual IHC {unit}")
    ax.set_title((f"{title}\n" if title else "") + r_text(summary), fontsize=9)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_psnr_hist(scores: Sequence[PairScore], path: Path, title: str = "") -> Path:
    """Histogram of per-image PSNR (finite values) -> PNG at ``path``."""
    plt = _pyplot()
    v = np.array([s.psnr for s in scores if math.isfinite(s.psnr)])
    n_inf = sum(1 for s in scores if s.psnr == math.inf)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if v.size:
        ax.hist(v, bins=min(30, max(5, v.size // 3)), color="tab:blue", alpha=0.8, edgecolor="white")
        ax.axvline(v.mean(), color="tab:red", lw=1.5, label=f"mean {v.mean():.2f} dB")
        ax.legend(fontsize=8)
    ax.set_xlabel("PSNR (dB)")
    ax.set_ylabel("images")
    extra = f"; {n_inf} identical pair(s) not shown" if n_inf else ""
    ax.set_title(f"{title} per-image PSNR (n={v.size}{extra})".strip(), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------------------- page
def _num(v: Optional[float]) -> str:
    """``data-v`` sort key: finite numbers as repr, +inf as a huge number, undefined as empty."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return "1e308" if v == math.inf else repr(float(v))


def _fmt(v, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if v == math.inf:
        return "inf"
    return format(v, spec)


def ranked(scores: Sequence[PairScore], n: int) -> Tuple[List[PairScore], List[PairScore]]:
    """``(best, worst)``: the ``n`` highest-PSNR images (descending; identical pairs first) and the ``n`` lowest
    (ascending); ties broken by SSIM then name. With fewer than ``2n`` images the lists overlap."""
    order = sorted(scores, key=lambda s: (-s.psnr, -s.ssim, s.stem))
    return order[:n], list(reversed(order))[:n]


def _summary_table(tags, summary: dict) -> None:
    rows = list(summary["per_level"].items())
    if "her2_unknown" in summary:
        rows.append(("unknown", summary["her2_unknown"]))
    rows.append(("all", summary))
    with tags.table(cls="summary"):
        with tags.thead():
            with tags.tr():
                for h in ("HER2", "N", "PSNR (dB)", "95 % CI", "SSIM", "95 % CI", "IOD r", "95 % CI (bootstrap)",
                          "IOD MAE", "DAB+ real", "DAB+ virtual"):
                    tags.th(h)
        with tags.tbody():
            for name, g in rows:
                with tags.tr():
                    tags.td(name, cls="t")
                    tags.td(str(g["n_images"]))
                    tags.td(_fmt(g["psnr"], ".2f"))
                    tags.td(_ci(g.get("psnr_ci95"), ".2f"))
                    tags.td(_fmt(g["ssim"], ".4f"))
                    tags.td(_ci(g.get("ssim_ci95"), ".4f"))
                    tags.td(_fmt(g["iod_pearson_r"], ".4f"))
                    tags.td(_ci(g.get("iod_pearson_r_ci95"), ".3f"))
                    tags.td(_fmt(g["iod_mae"], ".4g"))
                    tags.td(_fmt(g["dab_pos_real_mean"], ".3f"))
                    tags.td(_fmt(g["dab_pos_fake_mean"], ".3f"))


def _image_cell(tags, images_rel: str, stem: str, role: str, exists: bool) -> None:
    with tags.td():
        if exists:
            src = url_for(f"{images_rel}/{stem}_{role}.png")
            with tags.a(href=src):
                tags.img(src=src, alt=f"{stem} {visual_label(role)}", cls="g")
        else:
            tags.span("(not saved)")
        tags.br()
        tags.span(visual_label(role))


def _gallery(tags, title: str, items: Sequence[PairScore], images_dir: Path, images_rel: str, cls: str) -> None:
    tags.h3(title)
    with tags.table(cls=f"gallery {cls}"):
        for s in items:
            with tags.tr():
                for role in ("real_A", "fake_B", "real_B"):
                    _image_cell(tags, images_rel, s.stem, role, (images_dir / f"{s.stem}_{role}.png").is_file())
                with tags.td(cls="t"):
                    tags.b(s.stem)
                    tags.br()
                    tags.span(f"HER2 {s.her2 or 'unknown'}")
                    tags.br()
                    tags.span(f"PSNR {_fmt(s.psnr, '.2f')} dB")
                    tags.br()
                    tags.span(f"SSIM {_fmt(s.ssim, '.4f')}")


PER_IMAGE_COLUMNS = (("image", "text"), ("HER2", "text"), ("PSNR (dB)", "num"), ("SSIM", "num"),
                     ("IOD real", "num"), ("IOD virtual", "num"), ("|IOD error|", "num"), ("DAB+ real", "num"),
                     ("DAB+ virtual", "num"))


def _per_image_table(tags, scores: Sequence[PairScore], images_rel: str) -> None:
    with tags.table(cls="sortable", id="per-image"):
        with tags.thead():
            with tags.tr():
                for name, kind in PER_IMAGE_COLUMNS:
                    tags.th(name, data_type=kind, cls="t" if kind == "text" else "")
        with tags.tbody():
            for s in scores:
                err = abs(s.iod_fake - s.iod_real)
                with tags.tr():
                    with tags.td(cls="t", data_v=s.stem):
                        tags.a(s.stem, href=url_for(f"{images_rel}/{s.stem}_fake_B.png"))
                    tags.td(s.her2 or "unknown", cls="t", data_v=s.her2 or "~")
                    for v, spec in ((s.psnr, ".2f"), (s.ssim, ".4f"), (s.iod_real, ".5g"), (s.iod_fake, ".5g"),
                                    (err, ".4g"), (s.dab_pos_real, ".3f"), (s.dab_pos_fake, ".3f")):
                        tags.td(_fmt(v, spec), data_v=_num(v))


def _document(title: str):
    import dominate
    from dominate import tags
    from dominate.util import raw

    doc = dominate.document(title=title)
    with doc.head:
        tags.meta(charset="utf-8")
        tags.style(CSS)
        tags.script(raw(SORT_JS))  # constant code, no data (module doc)
    return doc, tags


def _fk_text(fk: dict) -> str:
    from metrics.report import fid_kid_text

    return fid_kid_text(fk)


def _provenance_block(tags, summary: dict) -> None:
    prov = summary.get("provenance")
    if not prov:
        return
    tags.h2("Provenance")
    git = prov.get("git", {})
    ck = prov.get("checkpoint") or {}
    items = [("command", prov.get("command")), ("created", prov.get("created")),
             ("git", f"{git.get('commit')} ({'dirty' if git.get('dirty') else 'clean'})" if git.get("commit")
              else f"unknown: {git.get('error')}"),
             ("versions", ", ".join(f"{k} {v}" for k, v in (prov.get("versions") or {}).items())),
             ("checkpoint", f"{ck.get('label')} in {ck.get('dir')} (set {ck.get('set_id')})" if ck
              else prov.get("checkpoint_note", "n/a"))]
    with tags.table(cls="prov"):
        for k, v in items:
            with tags.tr():
                tags.th(k, cls="t")
                tags.td(str(v), cls="t")


def write_run_report(run_dir: PathLike, summary: dict, scores: Sequence[PairScore], n_gallery: int = GALLERY_N
                     ) -> List[Path]:
    """Write ``report.html`` and its three PNG plots into ``run_dir`` (atomically); returns their paths.

    Args:
        run_dir: the ``<phase>_<epoch>`` folder; images are looked up in ``summary['images_dir']`` (default
            ``run_dir/images``) as ``<stem>_{real_A,fake_B,real_B}.png``.
        summary: the metrics.json dictionary (:func:`metrics.report.summarize`).
        scores: the per-image scores, in table order.
        n_gallery: images in each of the best and worst galleries (>= 1).

    Raises:
        ValueError: ``n_gallery`` < 1.
    """
    if n_gallery < 1:
        raise ValueError(f"gallery size must be >= 1, got {n_gallery}")
    run_dir = Path(run_dir)
    images_dir = Path(summary.get("images_dir") or run_dir / "images")
    images_rel = os.path.relpath(images_dir, run_dir)
    plots = [plot_by_level(scores, run_dir / "report_by_level.png"),
             plot_iod(scores, summary, run_dir / "report_iod.png"),
             plot_psnr_hist(scores, run_dir / "report_psnr_hist.png")]
    title = f"{summary['experiment']} - {summary['run']}: evaluation report"
    doc, tags = _document(title)
    best, worst = ranked(scores, n_gallery)
    with doc:
        tags.h1(title)
        tags.p(f"{summary['n_images']} images, {summary['n_left_out']} left out. "
               "H&E = input, virtual IHC = generated, real IHC = ground truth.", cls="note")
        tags.h2("Summary")
        _summary_table(tags, summary)
        tags.p(_fk_text(summary["fid_kid"]), cls="note")
        if summary.get("n_flagged"):
            flagged = summary.get("flagged") or {}
            tags.p(f"{summary['n_flagged']} flagged virtual IHC image(s) (flat or non-finite generator output; scores "
                   "of a collapsed generator are not meaningful): "
                   + ", ".join(f"{k} ({'/'.join(v)})" for k, v in list(flagged.items())[:20])
                   + (" ..." if len(flagged) > 20 else ""), cls="note flagged")
        if summary.get("iod_pearson_r_note"):
            tags.p(f"IOD Pearson r not reported: {summary['iod_pearson_r_note']}", cls="note")
        tags.p("Intervals: " + str(summary.get("protocol", {}).get("ci95", "")), cls="note")
        tags.p("Other files: ", tags.a("metrics.md", href="metrics.md"), ", ", tags.a("metrics.json", href="metrics.json"),
               ", ", tags.a("metrics.csv", href="metrics.csv"), ", ", tags.a("test page (index.html)", href="index.html"),
               cls="note")
        tags.h2("Plots")
        for p in plots:
            tags.img(src=url_for(p.name), cls="plot", alt=p.stem)
        tags.h2("Best and worst images by PSNR")
        _gallery(tags, f"Best {len(best)}", best, images_dir, images_rel, "best")
        _gallery(tags, f"Worst {len(worst)}", worst, images_dir, images_rel, "worst")
        tags.h2("Per-image scores (click a header to sort)")
        _per_image_table(tags, scores, images_rel)
        _provenance_block(tags, summary)
    page = atomic_write_text(run_dir / "report.html", doc.render())
    return [page] + plots


# ------------------------------------------------------------------------------------------------------- comparison
def write_comparison_report(root: PathLike, run: str, entries: Sequence[Tuple[dict, Sequence[PairScore], Path]],
                            left_out: Sequence[Tuple[str, str]] = ()) -> List[Path]:
    """Write ``<root>/report_<run>.html`` comparing experiments, with the plots side by side.

    Args:
        root: the results root.
        run: ``<phase>_<epoch>``.
        entries: ``(summary, scores, run_dir)`` per experiment, in table order.
        left_out: ``(experiment, reason)`` for the experiments not in the table.

    Returns the page's path and its PNGs (``report_<run>_by_level.png``, ``_iod.png``, ``_psnr_hist.png``).
    """
    plt = _pyplot()
    root = Path(root)
    k = max(1, len(entries))
    pngs = []
    fig, axes = plt.subplots(2, k, figsize=(4.2 * k, 7), squeeze=False)
    for j, (summ, sc, _) in enumerate(entries):
        groups = _levels(sc)
        _box_strip(axes[0][j], [(lv, [s.psnr for s in g if math.isfinite(s.psnr)]) for lv, g in groups],
                   "PSNR (dB)", summ["experiment"])
        _box_strip(axes[1][j], [(lv, [s.ssim for s in g]) for lv, g in groups], "SSIM", summ["experiment"])
    for row in axes:  # same y range across experiments, so the panels compare at a glance
        lims = [ax.get_ylim() for ax in row]
        for ax in row:
            ax.set_ylim(min(a for a, _ in lims), max(b for _, b in lims))
    fig.tight_layout()
    pngs.append(_save(fig, root / f"report_{run}_by_level.png"))
    fig, axes = plt.subplots(1, k, figsize=(4.5 * k, 4.5), squeeze=False)
    for j, (summ, sc, _) in enumerate(entries):
        x, y, unit = iod_values(sc, summ)
        ax = axes[0][j]
        ax.scatter(x, y, s=10, alpha=0.7)
        if x.size >= 2 and np.ptp(x) > 0 and summ.get("iod_pearson_r") is not None:
            slope, icpt = np.polyfit(x, y, 1)
            xs = np.array([x.min(), x.max()])
            ax.plot(xs, slope * xs + icpt, color="tab:red")
            lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
            ax.plot([lo, hi], [lo, hi], "--", color="grey", lw=1)
        ax.set_title(f"{summ['experiment']}\n{r_text(summ)}", fontsize=8)
        ax.set_xlabel(f"real {unit}")
        ax.set_ylabel(f"virtual {unit}")
    fig.tight_layout()
    pngs.append(_save(fig, root / f"report_{run}_iod.png"))
    fig, ax = plt.subplots(figsize=(7, 4))
    for summ, sc, _ in entries:
        v = [s.psnr for s in sc if math.isfinite(s.psnr)]
        if v:
            ax.hist(v, bins=20, alpha=0.45, label=f"{summ['experiment']} (n={len(v)})")
    ax.set_xlabel("PSNR (dB)")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    pngs.append(_save(fig, root / f"report_{run}_psnr_hist.png"))

    title = f"Comparison: {run}"
    doc, tags = _document(title)
    with doc:
        tags.h1(title)
        with tags.table(cls="sortable", id="comparison"):
            with tags.thead():
                with tags.tr():
                    for h, kind in (("experiment", "text"), ("N", "num"), ("PSNR (dB)", "num"), ("95 % CI", "text"),
                                    ("SSIM", "num"), ("95 % CI", "text"), ("IOD r", "num"), ("95 % CI", "text"),
                                    ("FID", "num"), ("KID x10^3", "num")):
                        tags.th(h, data_type=kind)
            with tags.tbody():
                for summ, _, run_dir in entries:
                    fk = summ["fid_kid"]
                    ok = fk.get("status") == "computed"
                    rel = os.path.relpath(Path(run_dir) / "report.html", root)
                    with tags.tr():
                        with tags.td(cls="t", data_v=summ["experiment"]):
                            tags.a(summ["experiment"], href=url_for(rel))
                        tags.td(str(summ["n_images"]), data_v=_num(summ["n_images"]))
                        tags.td(_fmt(summ["psnr"], ".2f"), data_v=_num(summ["psnr"]))
                        tags.td(_ci(summ.get("psnr_ci95"), ".2f"), data_v=_ci(summ.get("psnr_ci95"), ".2f"))
                        tags.td(_fmt(summ["ssim"], ".4f"), data_v=_num(summ["ssim"]))
                        tags.td(_ci(summ.get("ssim_ci95"), ".4f"), data_v=_ci(summ.get("ssim_ci95"), ".4f"))
                        tags.td(_fmt(summ["iod_pearson_r"], ".4f"), data_v=_num(summ["iod_pearson_r"]))
                        tags.td(_ci(summ.get("iod_pearson_r_ci95")), data_v=_ci(summ.get("iod_pearson_r_ci95")))
                        tags.td(_fmt(fk.get("fid") if ok else None, ".2f"), data_v=_num(fk.get("fid") if ok else None))
                        tags.td(_fmt(fk.get("kid_x1e3") if ok else None, ".2f"),
                                data_v=_num(fk.get("kid_x1e3") if ok else None))
        if left_out:
            tags.h3("Experiments left out")
            with tags.ul(cls="left-out"):
                for name, why in left_out:
                    tags.li(f"{name}: {why}")
        tags.h2("Plots")
        for p in pngs:
            tags.img(src=url_for(p.name), cls="plot", alt=p.stem)
    page = atomic_write_text(root / f"report_{run}.html", doc.render())
    return [page] + pngs
