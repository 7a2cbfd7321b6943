"""The stylesheet of the HTML pages skipsearch writes (the report's index.html, the frontier page)."""

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; padding: 0 1em; color: #222; }
h1 { font-size: 1.4em; word-break: break-all; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; } th, td { border: 1px solid #ccc; padding: 2px 8px; }
th { background: #f2f2f2; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.kv th { width: 11em; } tr.best td { background: #eef7ee; } code { word-break: break-all; }
.figs { display: flex; flex-wrap: wrap; gap: 12px; } figure { margin: 0; } figcaption { font-size: .9em; }
.note { color: #8a5a00; } .muted { color: #666; font-size: .9em; }
"""
