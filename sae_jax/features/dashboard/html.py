"""Self-contained HTML pages of a dashboard (no JS, no server, no external assets), written complete or absent."""

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
th{background:#f5f5f7} td.n{text-align:right;font-variant-numeric:tabular-nums}
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
"""

_SHADE = (255, 110, 0)


def _esc(s) -> str:
  return html.escape(str(s), quote=True)


def _show_token(s: str) -> str:
  """Visible whitespace: a newline shows as ↵ (and still breaks nothing), a tab as ⇥."""
  return s.replace("\r", "␍").replace("\n", "↵").replace("\t", "⇥") or "∅"


def _num(x: float) -> str:
  return f"{x:.4g}"


def _page(title: str, body: str) -> str:
  return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
          f'<meta name="viewport" content="width=device-width, initial-scale=1">'
          f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")


def _context_html(ex: dict, max_act: float, group_names) -> str:
  spans = []
  for i, (tok, a, w) in enumerate(zip(ex["text"], ex["acts"], ex["words"])):
    alpha = min(1.0, max(0.0, a / max_act)) if max_act > 0 else 0.0
    cls = "t" + (" c" if i == ex["center"] else "") + (" w" if w >= 0 else "")
    tip = f"{tok!r}  act {a:.4g}" + (f"  word: {group_names[w]}" if 0 <= w < len(group_names) else "")
    spans.append(f'<span class="{cls}" style="background:rgba({_SHADE[0]},{_SHADE[1]},{_SHADE[2]},{alpha:.3f})"'
                 f' title="{_esc(tip)}">{_esc(_show_token(tok))}</span>')
  return (f'<div class="ctx"><span class="v">{_esc(_num(ex["value"]))}</span>{"".join(spans)}'
          f'<span class="loc">row {ex["row"]} · pos {ex["pos"]}</span></div>')


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
  stats = [("rank", str(f["rank"])), ("max activation", _num(mx)), ("density", f"{100 * f['density']:.4g}%"),
           ("active tokens", f"{f['n_active']:,} / {f['n_tokens']:,}"), ("mean when active", _num(f["mean_active"]))]
  if "reasonscore" in f:
    stats.insert(1, ("ReasonScore", _num(f["reasonscore"]["score"])))
  parts.append('<div class="stats">' + "".join(f'<div class="stat">{_esc(k)}<b>{_esc(v)}</b></div>'
                                               for k, v in stats) + "</div>")
  density = f"density {100 * f['density']:.3g}%"
  panels = [f'<div class="panel"><h2>Activations</h2>'
            f'{_histogram_svg(f["histogram"]["edges"], f["histogram"]["counts"], density)}'
            f'<p class="muted">{len(f["histogram"]["counts"])} bins over (0, max], positive activations only.'
            "</p></div>"]
  if "reasonscore" in f:
    panels.append(f'<div class="panel"><h2>ReasonScore by word</h2>{_words_table(f["reasonscore"])}</div>')
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
               f"the example, shading is activation / max, underlined tokens are reasoning words.</p>")
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


def render_index(data: dict) -> str:
  """The table of features, in rank order, each linking to its page."""
  meta = data["meta"]
  has_score = any("reasonscore" in f for f in data["features"])
  has_label = any(f.get("label") for f in data["features"])
  head = ["rank", "feature"] + (["ReasonScore"] if has_score else []) + ["max act", "density"]
  head += (["top words"] if has_score else []) + (["label"] if has_label else []) + ["top logit-lens tokens"]
  rows = []
  for f in data["features"]:
    cells = [f'<td class="n">{f["rank"]}</td>',
             f'<td><a href="{feature_filename(f["feature"])}">{f["feature"]}</a></td>']
    if has_score:
      cells.append(f'<td class="n">{_num(f["reasonscore"]["score"]) if "reasonscore" in f else ""}</td>')
    cells += [f'<td class="n">{_num(f["max_activation"])}</td>', f'<td class="n">{100 * f["density"]:.3g}%</td>']
    if has_score:
      cells.append(f"<td>{_esc(', '.join(top_words(f)))}</td>")
    if has_label:
      cells.append(f"<td>{_esc(f.get('label') or '')}</td>")
    lens = f.get("logit_lens", {}).get("raw", {}).get("top", [])[:5]
    cells.append(f'<td class="muted">{_esc(" ".join(repr(r["text"]) for r in lens))}</td>')
    rows.append("<tr>" + "".join(cells) + "</tr>")
  info = " · ".join(_esc(f"{k}: {meta[k]}") for k in ("model", "sae", "hook", "n_rows", "n_tokens") if k in meta)
  body = (f"<h1>Feature dashboards</h1><p class=\"muted\">{info}</p>"
          f"<table><tr>{''.join(f'<th>{_esc(h)}</th>' for h in head)}</tr>{''.join(rows)}</table>")
  return _page("Feature dashboards", body)


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
