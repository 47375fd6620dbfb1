"""`summary.json`, `report.md` and PNG plots from stored sample records, beside the paper's reported deltas.

Every accuracy is labelled with the grader that produced it. The paper's deltas (steering feature 46379 of
layer 19 at strength 2.0, max activation 5.840) were measured with the reference grader plus an LLM judge on
one sample per problem; its GPQA figure comes from a secondary source. Settings whose params hold a numeric
`strength` form a sweep (one line per combination of their other params, leaving out a param that just repeats
the setting's name) and get accuracy/length-vs-strength plots with the baseline as a dashed line.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from typing import Iterable, Sequence

from sae_jax import pod
from sae_jax.evals import metrics

PAPER = {
  "setting": "feature 46379, layer 19, strength 2.0, max activation 5.840 (intervention)",
  "grader": "reference+judge",
  "accuracy_delta": {"aime24": "+13.4%", "math500": "+2.2%", "gpqa_diamond": "+4% (secondary source)"},
  "reasoning_length_delta": "up to +20.5%",
}
TASK_TITLES = {"aime24": "AIME 2024", "math500": "MATH-500", "gpqa_diamond": "GPQA Diamond",
               "arithmetic": "arithmetic (reasoning-gym)"}


def _settings_in(records: Sequence[dict], settings) -> list[dict]:
  if settings is not None:
    return [{"name": s.name, "params": dict(s.params)} for s in settings]
  params = {}
  for r in records:
    params.setdefault(r["setting"], r.get("params", {}))
  return [{"name": n, "params": p} for n, p in params.items()]


def summarize(records: Iterable[dict], settings=None, baseline: str | None = "baseline") -> dict:
  """Per (setting, task): pass@1 with interval and cons@k per grader, lengths; deltas against the baseline."""
  records = [r for r in records if r is not None]
  by = defaultdict(list)
  for r in records:
    by[(r["setting"], r["task"])].append(r)
  setting_list = _settings_in(records, settings)
  tasks = list(dict.fromkeys(r["task"] for r in records))
  results, rates = {}, {}
  for s in setting_list:
    for t in tasks:
      recs = by.get((s["name"], t))
      if not recs:
        continue
      graders = list(dict.fromkeys(g for r in recs for g in r["grades"]))
      entry = {"n_problems": len({r["problem_id"] for r in recs}), "n_samples": len(recs),
               "n_truncated": sum(r["finish_reason"] == "length" for r in recs), "primary_grader": recs[0]["grader"],
               "reasoning_tokens": metrics.length_stats(r["reasoning_tokens"] for r in recs),
               "total_tokens": metrics.length_stats(r["total_tokens"] for r in recs), "graders": {}}
      for g in graders:
        correct, votes = defaultdict(list), defaultdict(list)
        for r in recs:
          v = r["grades"][g]
          correct[r["problem_id"]].append(v["correct"])
          votes[r["problem_id"]].append((r["sample_index"], v["extracted"], v["correct"]))
        p1 = metrics.pass_at_1(correct)
        entry["graders"][g] = {"pass@1": p1, "cons@k": metrics.cons_at_k(votes) if p1["k"] != 1 else None}
        rates[(s["name"], t, g)] = metrics.per_problem_rates(correct)
      entry["k"] = entry["graders"][entry["primary_grader"]]["pass@1"]["k"]
      results.setdefault(s["name"], {})[t] = entry
  deltas = {}
  for s in setting_list:
    if s["name"] == baseline or baseline not in results or s["name"] not in results:
      continue
    for t, entry in results[s["name"]].items():
      base = results[baseline].get(t)
      if base is None:
        continue
      d = {"accuracy": {}}
      for g in entry["graders"]:
        if (baseline, t, g) not in rates:
          continue
        pd = metrics.paired_delta(rates[(baseline, t, g)], rates[(s["name"], t, g)])
        b = base["graders"][g]["pass@1"]["mean"]
        o = entry["graders"][g]["pass@1"]["mean"]
        d["accuracy"][g] = {"pp": _pp(pd["mean"]), "ci_pp": [_pp(pd["ci_low"]), _pp(pd["ci_high"])],
                            "relative_pct": 100 * (o - b) / b if b else None}
      for what in ("reasoning_tokens", "total_tokens"):
        b, o = base[what]["mean"], entry[what]["mean"]
        d[f"{what}_pct"] = 100 * (o - b) / b if b else None
      deltas.setdefault(s["name"], {})[t] = d
  return {"baseline": baseline, "settings": setting_list, "tasks": tasks, "results": results, "deltas": deltas,
          "no_think_token": any(r.get("think_end_id", 0) is None for r in records),
          "paper": PAPER, "interval": "95% Wilson interval over problems (see sae_jax.evals.metrics)"}


def _pp(x):
  return None if x is None else 100 * x


def _fmt(x, spec=".1f", none="-"):
  return none if x is None else format(x, spec)


def _signed(x, unit=""):
  return "-" if x is None else f"{x:+.1f}{unit}"


def render_markdown(summary: dict, plots: Sequence[str] = (), protocol: dict | None = None) -> str:
  lines = ["# Evaluation report", ""]
  if protocol:
    lines += ["Protocol: " + ", ".join(f"{k}={v}" for k, v in protocol.items()), ""]
  lines += [f"Accuracy is pass@1 in % with a {summary['interval']}; every number names its grader. "
            f"Lengths are generated tokens (reasoning = before the first `</think>`).", ""]
  if summary.get("no_think_token"):
    lines += ["The tokenizer has no `</think>` token: reasoning length = total length.", ""]
  for t in summary["tasks"]:
    lines += [f"## {TASK_TITLES.get(t, t)}", "",
              "| setting | grader | n | k | pass@1 % | 95% CI | cons@k % | reasoning tok mean / median / ceil(mean) "
              "| total tok mean / ceil(mean) | truncated |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary["settings"]:
      e = summary["results"].get(s["name"], {}).get(t)
      if e is None:
        continue
      rt, tt = e["reasoning_tokens"], e["total_tokens"]
      for g, ge in e["graders"].items():
        p = ge["pass@1"]
        label = g + (" (primary)" if g == e["primary_grader"] else "")
        ci = "-" if p["ci_low"] is None else f"[{100 * p['ci_low']:.1f}, {100 * p['ci_high']:.1f}]"
        lines.append(f"| {s['name']} | {label} | {e['n_problems']} | {e['k']} | {_fmt(_pp(p['mean']))} | {ci} | "
                     f"{_fmt(_pp(ge['cons@k']))} | {_fmt(rt['mean'], '.0f')} / {_fmt(rt['median'], '.0f')} / "
                     f"{rt['ceil_mean']} | {_fmt(tt['mean'], '.0f')} / {tt['ceil_mean']} | {e['n_truncated']} |")
    rows = [(s, summary["deltas"].get(s, {}).get(t)) for s in summary["deltas"]]
    rows = [(s, d) for s, d in rows if d]
    if rows:
      paper = PAPER["accuracy_delta"].get(t, "-")
      lines += ["", f"Against `{summary['baseline']}` (paired over problems):", "",
                "| setting | grader | Δ pass@1 (pp) | 95% CI (pp) | Δ relative | Δ reasoning length | Δ total length "
                "| paper Δ accuracy (reference+judge) | paper Δ reasoning length |",
                "|---|---|---|---|---|---|---|---|---|"]
      for s, d in rows:
        for g, a in d["accuracy"].items():
          ci = "-" if a["ci_pp"][0] is None else f"[{a['ci_pp'][0]:+.1f}, {a['ci_pp'][1]:+.1f}]"
          lines.append(f"| {s} | {g} | {_signed(a['pp'])} | {ci} | {_signed(a['relative_pct'], '%')} | "
                       f"{_signed(d['reasoning_tokens_pct'], '%')} | {_signed(d['total_tokens_pct'], '%')} | {paper} | "
                       f"{PAPER['reasoning_length_delta']} |")
    lines.append("")
  lines += [f"Paper: {PAPER['setting']}; graded by {PAPER['grader']}, one sample per problem.", ""]
  for p in plots:
    lines += [f"![{os.path.basename(p)}]({os.path.basename(p)})", ""]
  return "\n".join(lines)


def _sweeps(summary: dict, key: str = "strength") -> dict[str, list[tuple[float, str]]]:
  groups = defaultdict(list)
  for s in summary["settings"]:
    v = s["params"].get(key)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
      rest = {k: x for k, x in s["params"].items() if k != key and x != s["name"]}  # a label is no sweep axis
      rest = json.dumps(rest, sort_keys=True, default=str)
      groups[rest].append((float(v), s["name"]))
  return {g: sorted(pts) for g, pts in groups.items() if len(pts) >= 2}


def _save(plt, fig, out_dir: str, name: str) -> str:
  fig.tight_layout()
  path = os.path.join(out_dir, name)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def _accuracy_plot(plt, summary: dict, out_dir: str) -> str:
  """Grouped bars per task: one group per setting, one bar per grader, Wilson 95% intervals."""
  names, tasks = [s["name"] for s in summary["settings"]], summary["tasks"]
  fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.8), squeeze=False)
  for ax, t in zip(axes[0], tasks):
    entries = [summary["results"].get(n, {}).get(t) for n in names]
    graders = list(dict.fromkeys(g for e in entries if e for g in e["graders"]))
    width = 0.8 / max(1, len(graders))
    for gi, g in enumerate(graders):
      pts = [(si, e["graders"][g]["pass@1"]) for si, e in enumerate(entries) if e and g in e["graders"]]
      xs = [si + (gi - (len(graders) - 1) / 2) * width for si, _ in pts]
      ys = [100 * p["mean"] for _, p in pts]
      err = [[0 if p["ci_low"] is None else max(0.0, 100 * (p["mean"] - p["ci_low"])) for _, p in pts],
             [0 if p["ci_high"] is None else max(0.0, 100 * (p["ci_high"] - p["mean"])) for _, p in pts]]
      ax.bar(xs, ys, width, yerr=err, capsize=3, label=g)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("pass@1 (%), 95% CI")
    ax.set_title(TASK_TITLES.get(t, t))
    ax.legend(fontsize=7)
  return _save(plt, fig, out_dir, "accuracy.png")


def _length_plot(plt, summary: dict, records: Sequence[dict], out_dir: str) -> str:
  """Reasoning-length histograms per task, one outline per setting on shared bins."""
  names, tasks = [s["name"] for s in summary["settings"]], summary["tasks"]
  fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.5), squeeze=False)
  for ax, t in zip(axes[0], tasks):
    by_setting = {n: [r["reasoning_tokens"] for r in records if r["task"] == t and r["setting"] == n] for n in names}
    all_lens = [v for vs in by_setting.values() for v in vs]
    bins = min(30, max(5, len(set(all_lens))))
    for n, vs in by_setting.items():
      if vs:
        ax.hist(vs, bins=bins, range=(min(all_lens), max(all_lens) + 1), histtype="step", label=n, linewidth=1.5)
    ax.set_xlabel("reasoning tokens (before </think>)")
    ax.set_ylabel("samples")
    ax.set_title(TASK_TITLES.get(t, t))
    ax.legend(fontsize=7)
  return _save(plt, fig, out_dir, "reasoning_lengths.png")


def _sweep_plot(plt, summary: dict, sweeps: dict, out_dir: str) -> str:
  """Primary-grader accuracy and mean reasoning length against strength; the baseline dashed."""
  names, tasks = [s["name"] for s in summary["settings"]], summary["tasks"]
  fig, axes = plt.subplots(2, len(tasks), figsize=(4.5 * len(tasks), 6.5), squeeze=False)
  base = summary["results"].get(summary["baseline"], {})
  for ti, t in enumerate(tasks):
    for group, pts in sweeps.items():
      xs, acc, length = [], [], []
      for x, n in pts:
        e = summary["results"].get(n, {}).get(t)
        if e is not None:
          xs.append(x)
          acc.append(100 * e["graders"][e["primary_grader"]]["pass@1"]["mean"])
          length.append(e["reasoning_tokens"]["mean"])
      axes[0][ti].plot(xs, acc, "o-", label=group if group != "{}" else "sweep")
      axes[1][ti].plot(xs, length, "o-", label=group if group != "{}" else "sweep")
    if t in base:
      axes[0][ti].axhline(100 * base[t]["graders"][base[t]["primary_grader"]]["pass@1"]["mean"], ls="--", c="k",
                          label="baseline")
      axes[1][ti].axhline(base[t]["reasoning_tokens"]["mean"], ls="--", c="k", label="baseline")
    grader = next((e["primary_grader"] for n in names if (e := summary["results"].get(n, {}).get(t))), "")
    axes[0][ti].set_title(TASK_TITLES.get(t, t))
    axes[0][ti].set_ylabel(f"pass@1 (%), {grader}")
    axes[1][ti].set_ylabel("mean reasoning tokens")
    axes[1][ti].set_xlabel("strength")
    axes[0][ti].legend(fontsize=6)
  return _save(plt, fig, out_dir, "sweep.png")


def plot(summary: dict, records: Sequence[dict], out_dir: str) -> list[str]:
  """Accuracy bars with intervals, reasoning-length histograms and, for sweeps, curves; returns the PNG paths."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  paths = [_accuracy_plot(plt, summary, out_dir), _length_plot(plt, summary, records, out_dir)]
  sweeps = _sweeps(summary)
  if sweeps:
    paths.append(_sweep_plot(plt, summary, sweeps, out_dir))
  return paths


def write_report(out_dir: str, records: Iterable[dict], settings=None, baseline: str | None = "baseline",
                 protocol: dict | None = None, plots: bool = True) -> dict:
  """Writes summary.json, report.md and the plots into out_dir; returns the summary."""
  records = [r for r in records if r is not None]
  os.makedirs(out_dir, exist_ok=True)
  summary = summarize(records, settings, baseline)
  if protocol:
    summary["protocol"] = protocol
  if not pod.is_writer():  # in a pod, process 0 writes the report
    return summary
  pod.log_write(out_dir)
  pngs = plot(summary, records, out_dir) if plots and records else []
  for name, text in (("summary.json", json.dumps(summary, indent=2, default=str)),
                     ("report.md", render_markdown(summary, pngs, protocol))):
    tmp = os.path.join(out_dir, name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, os.path.join(out_dir, name))
  return summary
