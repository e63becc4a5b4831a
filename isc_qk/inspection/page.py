"""The report page: one self-contained HTML file (inline CSS, no script, no network), images by
relative path (thumbnails and the PR plot beside it), so it opens from a file:// URL and still
works when the folder is copied elsewhere. Rendered with Jinja2 (every value escaped)."""

from __future__ import annotations

import math
from urllib.parse import quote

TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>isc-qk inspect: {{ runs[0].name }}{% if runs|length > 1 %} vs {{ runs[1].name }}{% endif %}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 2em 3em; color: #222; }
h1 { font-size: 1.5em; margin: 0.8em 0 0.2em; }
h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ccc; padding-bottom: 0.2em; scroll-margin-top: 4em; }
nav { position: sticky; top: 0; background: #fff; padding: 0.4em 0; border-bottom: 1px solid #eee; z-index: 1; }
nav a { margin-right: 1.2em; color: #0366d6; text-decoration: none; }
p.note, .note { color: #555; font-size: 0.9em; max-width: 70em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; }
th { background: #f4f4f4; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.gallery td { text-align: center; font-size: 0.85em; }
figure { display: inline-block; margin: 2px; }
figure img { display: block; width: {{ size }}px; height: {{ size }}px; object-fit: contain; background: #f6f6f6; border: 3px solid transparent; }
figure.query img { border-color: #888; }
figure.wrong img { border-color: #d73a49; }
figure.true img { border-color: #28a745; }
figure.other img { border-color: #e39b00; }
figcaption { font-size: 0.85em; line-height: 1.3; max-width: {{ size + 6 }}px; word-wrap: break-word; }
.id { font-family: ui-monospace, monospace; }
.bad { color: #d73a49; font-weight: 600; }
.good { color: #28a745; font-weight: 600; }
.pr img { max-width: 100%; width: 600px; height: auto; }
.row { display: flex; flex-wrap: wrap; gap: 2em; align-items: flex-start; }
.row > div:first-child { max-width: 34em; }
</style>
</head>
<body>
{% macro fig(kind, id, cls, lines) -%}
<figure class="{{ cls }}"><img src="{{ thumb(kind, id) }}" alt="{{ id }}" width="{{ size }}" height="{{ size }}"><figcaption><span class="id">{{ id }}</span>{% for l in lines %}<br>{{ l }}{% endfor %}</figcaption></figure>
{%- endmacro %}
<h1>isc-qk inspect: {{ runs[0].name }}{% if runs|length > 1 %} vs {{ runs[1].name }}{% endif %}</h1>
<p class="note">Ground truth <span class="id">{{ inputs.ground_truth }}</span>; {{ runs[0].n_queries_searched }} queries searched
against {{ runs[0].n_references }} references; made by isc-qk {{ version }} with the evaluation's exact search
(score = minus the squared L2 distance; higher is more similar). Borders: <span class="good">green</span> true reference,
<span class="bad">red</span> wrong match, <span style="color:#e39b00;font-weight:600">orange</span> ranked above the true reference.</p>
<nav><a href="#summary">summary</a>{% for r in runs %}{% set sfx = '' if loop.first else '-' ~ loop.index0 %}<a href="#fp{{ sfx }}">false positives{% if runs|length > 1 %} ({{ r.name }}){% endif %}</a><a href="#missed{{ sfx }}">missed copies{% if runs|length > 1 %} ({{ r.name }}){% endif %}</a>{% endfor %}{% if families %}<a href="#families">by edit</a>{% endif %}{% if comparison %}<a href="#compare">{{ comparison.a }} vs {{ comparison.b }}</a>{% endif %}</nav>

<h2 id="summary">Summary</h2>
<div class="row"><div>
<table id="summary-table">
<tr><th>metric</th>{% for r in runs %}<th>{{ r.name }}</th>{% endfor %}</tr>
<tr><td>micro-AP</td>{% for r in runs %}<td class="num">{{ f4(r.micro_ap) }}</td>{% endfor %}</tr>
<tr><td>recall@P90</td>{% for r in runs %}<td class="num">{{ f4(r.recall_at_p90) if r.p90_reached else "not reached" }}</td>{% endfor %}</tr>
<tr><td>threshold@P90 (score)</td>{% for r in runs %}<td class="num">{{ g(r.threshold_at_p90) }}</td>{% endfor %}</tr>
<tr><td>recall@rank1</td>{% for r in runs %}<td class="num">{{ f4(r.recall_at_rank1) }}</td>{% endfor %}</tr>
<tr><td>recall@rank10</td>{% for r in runs %}<td class="num">{{ f4(r.recall_at_rank10) }}</td>{% endfor %}</tr>
<tr><td>predictions kept</td>{% for r in runs %}<td class="num">{{ r.n_predictions }}</td>{% endfor %}</tr>
<tr><td>positives (found in the list)</td>{% for r in runs %}<td class="num">{{ r.n_positives }} ({{ r.n_true_positives }})</td>{% endfor %}</tr>
<tr><td>copies missed at the operating point</td>{% for r in missed %}<td class="num">{{ r.count }}</td>{% endfor %}</tr>
</table>
{% for r in runs %}{% for w in r.warnings %}<p class="note bad">{{ r.name }}: {{ w }}</p>{% endfor %}{% endfor %}
<p class="note">micro-AP: the area under the precision-recall curve of the one global list (every ground-truth pair
counts, found or not). The dot marks recall@P90: the largest recall at which 90% of the pairs kept are correct; its
score is the threshold a deployment would use (<span class="id">isc-qk match --calibration</span> reads it from
<span class="id">evaluate-uap --json</span>).</p>
</div>
<div class="pr"><img src="{{ pr_png }}" alt="precision-recall curve" width="720" height="432"></div></div>

{% for r in runs %}
{% set fp = fps[loop.index0] %}
<h2 id="fp{{ '' if loop.first else '-' ~ loop.index0 }}">{{ r.name }}: the {{ fp|length }} highest-scoring false positives</h2>
<p class="note">Wrong pairs ranked highest in the global list. "above P90" marks those inside the operating point (they cost precision there).
Rank: the reference's rank among all references for that query.</p>
<table class="gallery fp-table">
<tr><th>#</th><th>query</th><th>wrongly matched reference</th><th>its true reference</th></tr>
{% for e in fp %}
<tr><td>{{ e.list_position }}{% if e.above_p90 %}<br><span class="bad">above P90</span>{% endif %}</td>
<td>{{ fig("q", e.query, "query", edits(e)) }}</td>
<td>{{ fig("r", e.reference, "wrong", ["score " ~ g(e.score), "rank " ~ rank(e.rank)]) }}</td>
<td>{% if e.distractor %}<span class="note">none: a distractor query<br>(no copy among the references)</span>{% else %}{% for t in e.true %}{{ fig("r", t.reference, "true", ["score " ~ g(t.score), "rank " ~ rank(t.rank), "in the list" if t.retrieved else "not in the list"]) }}{% endfor %}{% endif %}</td></tr>
{% endfor %}
</table>
{% endfor %}

{% for r in runs %}
{% set m = missed[loop.index0] %}
<h2 id="missed{{ '' if loop.first else '-' ~ loop.index0 }}">{{ r.name }}: copies missed ({{ m.count }} of {{ r.n_positives }}; {{ m.rows|length }} hardest shown)</h2>
<p class="note">Found means {{ r.found_rule }}. Each row: the query, its true reference (score and rank among all references),
and what the descriptor ranked above it.</p>
<table class="gallery missed-table">
<tr><th>query</th><th>true reference</th><th>ranked above it</th></tr>
{% for e in m.rows %}
<tr><td>{{ fig("q", e.query, "query", edits(e)) }}</td>
<td>{{ fig("r", e.reference, "true", ["score " ~ g(e.score), "rank " ~ rank(e.rank), e.reason]) }}</td>
<td>{% for x in e.above %}{{ fig("r", x.reference, "other", ["score " ~ g(x.score), "rank " ~ x.rank]) }}{% endfor %}</td></tr>
{% endfor %}
</table>
{% endfor %}

{% if families %}
<h2 id="families">By edit (manifest <span class="id">{{ inputs.manifest }}</span>)</h2>
<p class="note">Each query counts in the group of every edit it went through. micro-AP and recall@P90: the group's queries alone
(their predictions in the one global list, their positives); found at global P90: the share of the group's copies found at the
whole result's operating point.{% if families.unlisted %} {{ families.unlisted }} ground-truth queries have no manifest row.{% endif %}</p>
{% for title, key in (("edit family", "family"), ("edit", "op")) %}
<table class="family-table">
<tr><th>{{ title }}</th><th>queries</th><th>copies</th>{% for r in runs %}<th>{{ r.name }} micro-AP</th><th>R@P90</th><th>found at global P90</th>{% endfor %}</tr>
{% for row in families[key] %}
<tr><td>{{ row.group }}</td><td class="num">{{ row.queries }}</td><td class="num">{{ row.positives }}</td>
{% for x in row.runs %}<td class="num">{{ f4(x.micro_ap) }}</td><td class="num">{{ f4(x.recall_at_p90) }}</td><td class="num">{{ f4(x.found_at_global_p90) }}</td>{% endfor %}</tr>
{% endfor %}
</table>
{% endfor %}
{% endif %}

{% if comparison %}
<h2 id="compare">{{ comparison.a }} vs {{ comparison.b }}: the copies one finds and the other misses</h2>
<p class="note">Both find {{ comparison.both }}, neither {{ comparison.neither }}; only {{ comparison.a }}: {{ comparison.a_only.count }},
only {{ comparison.b }}: {{ comparison.b_only.count }}. Found: {{ comparison.a }} {{ comparison.a_rule }}; {{ comparison.b }} {{ comparison.b_rule }}.</p>
{% for key, win, lose in (("a_only", comparison.a, comparison.b), ("b_only", comparison.b, comparison.a)) %}
<h3>{{ win }} finds, {{ lose }} misses ({{ comparison[key].count }}; {{ comparison[key].rows|length }} shown, {{ lose }}'s worst first)</h3>
<table class="gallery compare-table">
<tr><th>query</th><th>true reference</th><th>{{ lose }} ranked first instead</th></tr>
{% for e in comparison[key].rows %}
<tr><td>{{ fig("q", e.query, "query", edits(e)) }}</td>
<td>{{ fig("r", e.reference, "true", [win ~ ": " ~ g(e.winner.score) ~ ", rank " ~ rank(e.winner.rank), lose ~ ": " ~ g(e.loser.score) ~ ", rank " ~ rank(e.loser.rank)]) }}</td>
<td>{% if not e.loser_top %}<span class="note">(no descriptor)</span>{% elif e.loser_top.reference == e.reference %}<span class="note">{{ lose }} ranked the true reference first, but below its operating point</span>{% else %}{{ fig("r", e.loser_top.reference, "other", ["score " ~ g(e.loser_top.score)]) }}{% endif %}</td></tr>
{% endfor %}
</table>
{% endfor %}
{% endif %}

{% if failures %}
<h2>Images that could not be shown</h2>
<ul>{% for f in failures %}<li class="note">{{ f }}</li>{% endfor %}</ul>
{% endif %}
<p class="note">Data for scripts: <a href="inspect.json">inspect.json</a>.</p>
</body>
</html>
"""


def _f4(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def _g(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def _rank(x) -> str:
    return "-" if x is None else f"{x:,}"


def _edits(entry: dict) -> list[str]:
    """The query's edits (with a manifest), shown under its thumbnail."""
    return [", ".join(entry["edits"])] if entry.get("edits") else []


def render(context: dict, thumbs: dict[tuple[str, str], str]) -> str:
    """The page's HTML; `thumbs` maps (kind, id) to the thumbnail's page-relative path."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.globals.update(f4=_f4, g=_g, rank=_rank, edits=_edits,
                       thumb=lambda kind, image_id: quote(thumbs[(kind, image_id)]))
    return env.from_string(TEMPLATE).render(**context)
