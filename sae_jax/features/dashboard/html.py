"""Self-contained HTML pages of a dashboard (no server, no external assets), written complete or absent.

The only script is the index's column sorter (inline, a few lines; the table reads fine without it). Contexts
open to their longer window with <details>, which needs no script.
"""

import html
import json
import os

from sae_jax import io as sio


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em auto;max-width:1150px;
  color:#1d1d1f;padding:0 1em}
h1{font-size:1.5em;margin:.2em 0} h2{font-size:1.15em;margin:1.4em 0 .4em;border-bottom:1px solid #ddd}
h3{font-size:1em;margin:1em 0 .3em;color:#333}
table{border-collapse:collapse;font-size:14px} th,td{padding:3px 10px;text-align:left;border-bottom:1px solid #eee}
th{background:#f5f5f7} td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
a{color:#0b63c5;text-decoration:none} a:hover{text-decoration:underline}
.stats{display:flex;flex-wrap:wrap;gap:1.5em;margin:.5em 0}
.stat{background:#f5f5f7;border-radius:6px;padding:.4em .8em}.stat b{display:block;font-size:1.2em}
.panels{display:flex;flex-wrap:wrap;gap:2em}.panel{flex:1 1 420px}
.ctx{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px;white-space:pre;
  line-height:2;overflow-x:auto;margin:0}
.ctx .v{display:inline-block;width:6.5em;text-align:right;color:#666;margin-right:1em}
.ctx .loc{color:#aaa;font-size:11px;margin-left:1em}
.t{border-radius:2px}.t.c{outline:1.5px solid #222}
.t.w{text-decoration:underline;text-decoration-color:#0b63c5;text-decoration-thickness:2px;text-underline-offset:3px}
.bar{background:#ff8a3d;height:.9em;display:inline-block;vertical-align:middle}
.lens td.tok{font-family:ui-monospace,monospace;white-space:pre}
.pos{color:#0a7d32}.neg{color:#b3261e}.muted{color:#777;font-size:13px}
.nav{font-size:14px;margin-bottom:.5em}
.badge{display:inline-block;border-radius:4px;padding:0 .45em;font-size:12px;font-weight:600;margin-left:.4em}
.badge.dense{background:#fde2d4;color:#9a3412;border:1px solid #f2a27a}
.badge.dead{background:#eee;color:#555;border:1px solid #ccc}
.warn{background:#fff4e5;border-left:4px solid #f08c00;padding:.5em .8em;margin:.6em 0}
th.sort{cursor:pointer;user-select:none}th.sort::after{content:" ↕";color:#aaa}
th[aria-sort=ascending]::after{content:" ▲";color:#333}th[aria-sort=descending]::after{content:" ▼";color:#333}
details.ex>summary{cursor:pointer}.ctx.long{background:#f7f7f9;margin:0 0 .4em 2em;white-space:pre-wrap}
"""

# Sorts the index table by a header's column on click (numbers by data-v, text by content; first click: largest
# first); `index.html#sort=density` (or `#sort=-density`, ascending) opens sorted.
_SORT_JS = """
(function(){var t=document.getElementById("features");if(!t)return;var b=t.tBodies[0];
var hs=Array.prototype.slice.call(t.tHead.rows[0].cells);
function key(c){var v=c.getAttribute("data-v");return v===null?c.textContent:parseFloat(v);}
function sort(i,desc){var rows=Array.prototype.slice.call(b.rows);rows.sort(function(x,y){
var a=key(x.cells[i]),c=key(y.cells[i]);var r=(typeof a==="number"&&typeof c==="number")?a-c:
String(a).localeCompare(String(c));return desc?-r:r;});rows.forEach(function(r){b.appendChild(r);});
hs.forEach(function(h,j){h.setAttribute("aria-sort",j===i?(desc?"descending":"ascending"):"none");});}
hs.forEach(function(h,i){h.addEventListener("click",function(){
sort(i,h.getAttribute("aria-sort")!=="descending");});});
var m=/^#sort=(-?)([A-Za-z_]+)$/.exec(location.hash);
if(m)hs.forEach(function(h,i){if(h.getAttribute("data-key")===m[2])sort(i,m[1]!=="-");});})();
"""

_SHADE = (255, 110, 0)


def _esc(s) -> str:
  return html.escape(str(s), quote=True)


def _show_token(s: str) -> str:
  """Visible whitespace: a newline shows as ↵ (and still breaks nothing), a tab as ⇥."""
  return s.replace("\r", "␍").replace("\n", "↵").replace("\t", "⇥") or "∅"


def _num(x: float) -> str:
  return f"{x:.4g}"


def _page(title: str, body: str, script: str = "") -> str:
  script = f"<script>{script}</script>" if script else ""
  return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
          f'<meta name="viewport" content="width=device-width, initial-scale=1">'
          f"<style>{_CSS}</style></head><body>\n{body}\n{script}</body></html>\n")


def _spans(window: dict, max_act: float, group_names) -> str:
  spans = []
  for i, (tok, a, w) in enumerate(zip(window["text"], window["acts"], window["words"])):
    alpha = min(1.0, max(0.0, a / max_act)) if max_act > 0 else 0.0
    cls = "t" + (" c" if i == window["center"] else "") + (" w" if w >= 0 else "")
    tip = f"{tok!r}  act {a:.4g}" + (f"  word: {group_names[w]}" if 0 <= w < len(group_names) else "")
    spans.append(f'<span class="{cls}" style="background:rgba({_SHADE[0]},{_SHADE[1]},{_SHADE[2]},{alpha:.3f})"'
                 f' title="{_esc(tip)}">{_esc(_show_token(tok))}</span>')
  return "".join(spans)


def _context_html(ex: dict, max_act: float, group_names) -> str:
  """One example's line; where its expanded window is longer, a <details> that opens to it on click."""
  line = (f'<span class="v">{_esc(_num(ex["value"]))}</span>{_spans(ex, max_act, group_names)}'
          f'<span class="loc">row {ex["row"]} · pos {ex["pos"]}</span>')
  big = ex.get("expanded")
  if not big or len(big["tokens"]) == len(ex["tokens"]):
    return f'<div class="ctx">{line}</div>'
  return (f'<details class="ex"><summary class="ctx">{line}</summary>'
          f'<div class="ctx long">{_spans(big, max_act, group_names)}</div></details>')


def _pct(x: float) -> str:
  return f"{100 * x:.3g}%"


def _density_html(f: dict, threshold: float) -> str:
  """The density with a badge: dense above the threshold, never fires at 0."""
  badge = ""
  if f["n_active"] == 0:
    badge = '<span class="badge dead" title="no activation on these tokens">never fires</span>'
  elif f["density"] > threshold:
    badge = (f'<span class="badge dense" title="fires on more than {_pct(threshold)} of tokens">dense</span>')
  return _pct(f["density"]) + badge


def _feature_link(j: int, pages) -> str:
  return f'<a href="{feature_filename(j)}">{j}</a>' if j in pages else str(j)


def _neighbours_html(f: dict, pages, threshold: float, n_tokens) -> str:
  nb = f.get("neighbours", {})
  if not nb:
    return ""

  def density(n):
    if "density" not in n:
      return ""
    badge = '<span class="badge dense">dense</span>' if n["density"] > threshold else ""
    return f'<td class="n" data-v="{n["density"]!r}">{_pct(n["density"])}{badge}</td>'

  dens_head = "<th>density</th>" if any("density" in n for v in nb.values() for n in v) else ""
  dec = "".join(f'<tr><td>{_feature_link(n["feature"], pages)}</td><td class="n" data-v="{n["cosine"]!r}">'
                f'{n["cosine"]:.3f}</td>{density(n)}</tr>' for n in nb["decoder"])
  panels = [f'<div class="panel"><h3>By decoder cosine</h3><table id="nb-decoder"><tr><th>feature</th>'
            f"<th>cosine</th>{dens_head}</tr>{dec}</table></div>"]
  if "coactivation" in nb:
    co = "".join(f'<tr><td>{_feature_link(n["feature"], pages)}</td><td class="n" data-v="{n["jaccard"]!r}">'
                 f'{n["jaccard"]:.3f}</td><td class="n">{n["count"]:,}</td>{density(n)}</tr>'
                 for n in nb["coactivation"])
    co = co or '<tr><td colspan="4" class="muted">fires with no other feature</td></tr>'
    panels.append(f'<div class="panel"><h3>By co-activation</h3><table id="nb-coact"><tr><th>feature</th>'
                  f"<th>Jaccard</th><th>tokens both fire</th>{dens_head}</tr>{co}</table></div>")
  over = f" over the dashboard's {n_tokens:,} tokens" if n_tokens else ""
  return (f'<h2>Nearest features</h2><div class="panels">{"".join(panels)}</div>'
          f'<p class="muted">Decoder cosine: of the unit decoder rows, over all latents. Jaccard: tokens on which '
          f"both fire / tokens on which either fires{_esc(over)}. Linked features have a page here.</p>")


def _histogram_svg(edges, counts, label: str, color: str = "#ff8a3d", width: int = 480, height: int = 130) -> str:
  if not counts:
    return '<p class="muted">no activations</p>'
  top = max(max(counts), 1)
  n = len(counts)
  plot_h, bw = height - 22, width / n
  bars = []
  for i, c in enumerate(counts):
    h = plot_h * c / top
    bars.append(f'<rect x="{i * bw:.2f}" y="{plot_h - h:.2f}" width="{max(bw - 1, 0.5):.2f}" height="{h:.2f}" '
                f'fill="{color}"><title>({_num(edges[i])}, {_num(edges[i + 1])}]: {c}</title></rect>')
  axis = (f'<text x="0" y="{height - 6}" font-size="11">{_esc(_num(edges[0]))}</text>'
          f'<text x="{width}" y="{height - 6}" font-size="11" text-anchor="end">{_esc(_num(edges[-1]))}</text>'
          f'<text x="{width / 2}" y="{height - 6}" font-size="11" text-anchor="middle">{_esc(label)}</text>')
  return (f'<svg width="{width}" height="{height}" '
          f'viewBox="0 0 {width} {height}" role="img"><title>{_esc(label)}</title>'
          f'<line x1="0" y1="{plot_h}" x2="{width}" y2="{plot_h}" stroke="#999"/>{"".join(bars)}{axis}</svg>')


def _lens_table(rows: list[dict], cls: str, title: str) -> str:
  body = "".join(f'<tr><td class="tok">{_esc(repr(r["text"]))}</td><td class="n {cls}">{_num(r["value"])}</td></tr>'
                 for r in rows)
  return f"<table class=\"lens\"><tr><th>{_esc(title)}</th><th>logit</th></tr>{body}</table>"


def _words_table(rs: dict) -> str:
  words = rs["words"]
  top = max(list(words.values()) + [1e-30])
  rows = "".join(f'<tr><td>{_esc(w)}</td><td class="n">{_num(m)}</td><td><span class="bar" '
                 f'style="width:{160 * max(m, 0) / top:.1f}px"></span></td></tr>' for w, m in words.items())
  return (f'<table><tr><th>word</th><th>mean act in window</th><th></th></tr>{rows}</table>'
          f'<p class="muted">μ⁺ {_num(rs["mu_pos"])} · μ⁻ {_num(rs["mu_neg"])} · normalised entropy '
          f'{_num(rs["entropy_norm"])}</p>')


def feature_filename(feature: int) -> str:
  return f"feature_{int(feature)}.html"


def top_words(f: dict, n: int = 3) -> list[str]:
  """The reasoning-vocabulary groups with the highest mean activation in their ReasonScore window (the score's
  per-word split; not the tokens the feature fires on most)."""
  words = f.get("reasonscore", {}).get("words", {})
  return [w for w in sorted(words, key=lambda w: -words[w]) if words[w] > 0][:n]


def render_feature(f: dict, data: dict, prev_feature=None, next_feature=None) -> str:
  """One self-contained page: stats, ReasonScore words, histogram, logit lens, top and quantile contexts."""
  meta, groups = data["meta"], data["meta"].get("group_names", [])
  mx = f["max_activation"]
  nav = ['<a href="index.html">index</a>']
  if prev_feature is not None:
    nav.append(f'<a href="{feature_filename(prev_feature)}">← feature {prev_feature}</a>')
  if next_feature is not None:
    nav.append(f'<a href="{feature_filename(next_feature)}">feature {next_feature} →</a>')
  parts = [f'<div class="nav">{" · ".join(nav)}</div>', f"<h1>Feature {f['feature']}</h1>"]
  if f.get("label"):
    parts.append(f'<p><b>Label:</b> {_esc(f["label"])} <span class="muted">{_esc(f.get("label_explanation", ""))}'
                 "</span></p>")
  where = " · ".join(_esc(f"{k}: {meta[k]}") for k in ("model", "sae", "hook") if meta.get(k))
  if where:
    parts.append(f'<p class="muted">{where}</p>')
  threshold = meta.get("config", {}).get("dense_threshold", 0.1)
  stats = [("rank", _esc(f["rank"])), ("max activation", _esc(_num(mx))),
           ("density", _density_html(f, threshold)),
           ("active tokens", _esc(f"{f['n_active']:,} / {f['n_tokens']:,}")),
           ("mean when active", _esc(_num(f["mean_active"])))]
  if "reasonscore" in f:
    stats.insert(1, ("ReasonScore", _esc(_num(f["reasonscore"]["score"]))))
  parts.append('<div class="stats">' + "".join(f'<div class="stat" id="stat-{k.replace(" ", "-")}">{_esc(k)}'
                                               f"<b>{v}</b></div>" for k, v in stats) + "</div>")
  if f["n_active"] and f["density"] > threshold:
    parts.append(f'<p class="warn" id="dense-warning"><b>Dense feature:</b> fires on {_pct(f["density"])} of '
                 f"tokens, more than {_pct(threshold)}. A feature this frequent is often a broad direction shared "
                 "by many features rather than one concept: compare its nearest features below before reading "
                 "its contexts and ReasonScore as specific.</p>")
  pages = {g["feature"] for g in data["features"]}
  parts.append(_neighbours_html(f, pages, threshold, meta.get("summary", {}).get("n_tokens")))
  density = f"density {100 * f['density']:.3g}%"
  panels = [f'<div class="panel"><h2>Activations</h2>'
            f'{_histogram_svg(f["histogram"]["edges"], f["histogram"]["counts"], density)}'
            f'<p class="muted">{len(f["histogram"]["counts"])} bins over (0, max], positive activations only.'
            "</p></div>"]
  if "reasonscore" in f:
    panels.append(f'<div class="panel"><h2>ReasonScore by word</h2>{_words_table(f["reasonscore"])}'
                  '<p class="muted">Mean activation in the ReasonScore window of each group of the reasoning '
                  "vocabulary (the score's per-word split).</p></div>")
  parts.append('<div class="panels">' + "".join(panels) + "</div>")
  lens = f.get("logit_lens", {})
  titles = {"raw": "Logit lens: unit(W_dec) @ W_U (no final norm, as the reference)",
            "final_norm": "Logit lens with the final norm's weight: (unit(W_dec) * g) @ W_U"}
  for name, title in titles.items():
    if name in lens:
      r = lens[name]
      parts.append(f'<h2>{_esc(title)}</h2><div class="panels"><div class="panel">'
                   f'{_lens_table(r["top"], "pos", "top tokens")}</div><div class="panel">'
                   f'{_lens_table(r["bottom"], "neg", "bottom tokens")}</div><div class="panel">'
                   f'{_histogram_svg(r["histogram"]["edges"], r["histogram"]["counts"], "logits", "#7aa6d8")}'
                   f"</div></div>")
  parts.append(f'<h2>Top activations</h2><p class="muted">The {len(f["top"])} highest; the outlined token is '
               f"the example, shading is activation / max, underlined tokens are reasoning words. Click an example "
               f"to see a longer context.</p>")
  parts.extend(_context_html(ex, mx, groups) for ex in f["top"])
  if f["quantiles"]:
    parts.append("<h2>Quantile groups</h2>")
  for i, q in reversed(list(enumerate(f["quantiles"]))):
    share = 100 * q["count"] / f["n_active"] if f["n_active"] else 0
    parts.append(f'<h3>Interval {i + 1}: ({_num(q["lo"])}, {_num(q["hi"])}] <span class="muted">· '
                 f'{q["count"]:,} tokens ({share:.3g}% of active)</span></h3>')
    parts.extend(_context_html(ex, mx, groups) for ex in q["examples"])
    if not q["examples"]:
      parts.append('<p class="muted">no tokens in this interval</p>')
  return _page(f"Feature {f['feature']}", "\n".join(parts))


def _summary_html(meta: dict, features: list[dict]) -> str:
  """The SAE on the dashboard's tokens, and a warning when dense features are among those shown."""
  sm = meta.get("summary")
  if not sm:
    return ""
  cos = sm.get("decoder_cosine", {})
  cards = [("tokens", "n_tokens", f"{sm['n_tokens']:,}"), ("latents", "d_sae", f"{sm['d_sae']:,}"),
           ("L0", "l0", _num(sm["l0"])), ("dead", "dead_fraction", _pct(sm["dead_fraction"])),
           (f"dense (> {_pct(sm['dense_threshold'])})", "dense_fraction", _pct(sm["dense_fraction"])),
           ("explained variance", "explained_variance", f"{sm['explained_variance']:.4f}"),
           ("pooled explained variance", "explained_variance_pooled", f"{sm['explained_variance_pooled']:.4f}"),
           ("MSE per token", "mse", _num(sm["mse"]))]
  html_cards = "".join(f'<div class="stat" id="sum-{key}" data-v="{sm[key]!r}">{_esc(label)}<b>{_esc(v)}</b></div>'
                       for label, key, v in cards)
  if cos:
    html_cards += (f'<div class="stat" id="sum-cosine" data-v="{cos["shown_mean"]!r}" '
                   f'data-random="{cos["random_mean"]!r}">mean decoder cosine, shown pairs / random pairs'
                   f'<b>{cos["shown_mean"]:.3f} / {cos["random_mean"]:.3f}</b></div>')
  out = [f'<h2>The SAE on these tokens</h2><div class="stats" id="summary">{html_cards}</div>',
         '<p class="muted">Measured on the dashboard\'s own token rows: held-out tokens only if the SAE never '
         "trained on them (the demo's rows are new problems; the paper's extraction set is part of OpenThoughts-114k, "
         "which its SAE trained on). Explained variance: SAELens' (as in the training log), the mean over tokens of "
         "1 - |x - x&#770;|&sup2; / |x - mean x|&sup2;, the mean over each batch of rows; pooled: "
         "1 - &Sigma;|x - x&#770;|&sup2; / &Sigma;|x - mean x|&sup2; over all tokens, which a few tokens of huge "
         "variance can dominate. Dead: never fires on them; L0: mean number of latents firing per token.</p>"]
  dense = [f for f in features if f["n_active"] and f["density"] > sm["dense_threshold"]]
  if dense:
    cos_note = (f" Their decoder rows have a mean cosine of {cos['shown_mean']:.2f} between shown features, "
                f"{cos['random_mean']:.2f} between random pairs of latents." if cos else "")
    out.append(f'<p class="warn" id="dense-summary"><b>{len(dense)} of {len(features)} shown features are '
               f"dense</b> (fire on more than {_pct(sm['dense_threshold'])} of tokens).{_esc(cos_note)} Dense "
               "features with close decoder directions are likely one broad direction, not separate concepts.</p>")
  return "".join(out)


def render_index(data: dict) -> str:
  """The SAE summary and the table of features, in rank order (sortable by any column), each linking to its
  page."""
  meta, features = data["meta"], data["features"]
  threshold = meta.get("config", {}).get("dense_threshold", 0.1)
  has_score = any("reasonscore" in f for f in features)
  has_label = any(f.get("label") for f in features)
  has_nb = any(f.get("neighbours", {}).get("decoder") for f in features)
  words_head = ('<th class="sort" data-key="words" title="the reasoning-vocabulary groups with the highest mean '
                "activation in their ReasonScore window (the score's per-word split), not the feature's most "
                'frequent tokens">top ReasonScore words</th>')
  head = ['<th class="sort" data-key="rank">rank</th>', '<th class="sort" data-key="feature">feature</th>']
  head += ['<th class="sort" data-key="score">ReasonScore</th>'] if has_score else []
  head += ['<th class="sort" data-key="max">max act</th>', '<th class="sort" data-key="density">density</th>']
  head += [words_head] if has_score else []
  head += ['<th class="sort" data-key="label">label</th>'] if has_label else []
  head += ['<th class="sort" data-key="cosine" title="the latent whose decoder row is closest">'
           "nearest by decoder</th>"] if has_nb else []
  head += ['<th class="sort" data-key="lens">top logit-lens tokens</th>']
  pages = {f["feature"] for f in features}
  rows = []
  for f in features:
    cells = [f'<td class="n" data-v="{f["rank"]}">{f["rank"]}</td>',
             f'<td data-v="{f["feature"]}"><a href="{feature_filename(f["feature"])}">{f["feature"]}</a></td>']
    if has_score:
      score = f"{f['reasonscore']['score']!r}" if "reasonscore" in f else "-1e308"
      cells.append(f'<td class="n" data-v="{score}">{_num(float(score)) if "reasonscore" in f else ""}</td>')
    cells += [f'<td class="n" data-v="{f["max_activation"]!r}">{_num(f["max_activation"])}</td>',
              f'<td class="n" data-v="{f["density"]!r}">{_density_html(f, threshold)}</td>']
    if has_score:
      cells.append(f"<td>{_esc(', '.join(top_words(f)))}</td>")
    if has_label:
      cells.append(f"<td>{_esc(f.get('label') or '')}</td>")
    if has_nb:
      near = f.get("neighbours", {}).get("decoder", [])[:1]
      cells.append(f'<td class="n" data-v="{near[0]["cosine"]!r}">{_feature_link(near[0]["feature"], pages)} '
                   f'({near[0]["cosine"]:.3f})</td>' if near else '<td data-v="-2"></td>')
    lens = f.get("logit_lens", {}).get("raw", {}).get("top", [])[:5]
    cells.append(f'<td class="muted">{_esc(" ".join(repr(r["text"]) for r in lens))}</td>')
    rows.append("<tr>" + "".join(cells) + "</tr>")
  info = " · ".join(_esc(f"{k}: {meta[k]}") for k in ("model", "sae", "hook", "n_rows", "n_tokens") if k in meta)
  body = (f"<h1>Feature dashboards</h1><p class=\"muted\">{info}</p>{_summary_html(meta, features)}"
          f"<h2>Features</h2><p class=\"muted\">Click a column's header to sort by it.</p>"
          f'<table id="features"><thead><tr>{"".join(head)}</tr></thead><tbody>{"".join(rows)}</tbody></table>')
  return _page("Feature dashboards", body, _SORT_JS)


def write_dashboards(data: dict, out_dir: str) -> str:
  """index.html, feature_<id>.html per feature and features.json, written into a temp dir that replaces out_dir
  (which must be new, empty or an earlier dashboard: `sae_jax.io.replaced_dir`)."""
  ids = [f["feature"] for f in data["features"]]

  def write(tmp):
    with open(os.path.join(tmp, "features.json"), "w") as fh:
      json.dump(data, fh, indent=1, ensure_ascii=False)
    with open(os.path.join(tmp, "index.html"), "w", encoding="utf-8") as fh:
      fh.write(render_index(data))
    for i, f in enumerate(data["features"]):
      prev_f = ids[i - 1] if i > 0 else None
      next_f = ids[i + 1] if i + 1 < len(ids) else None
      with open(os.path.join(tmp, feature_filename(f["feature"])), "w", encoding="utf-8") as fh:
        fh.write(render_feature(f, data, prev_f, next_f))

  return sio.write_dir(out_dir, write, "dashboard")
