"""``vlens lab``: run every section and write report.md, report.html and manifest.json."""
