"""The flywheel overview (`flywheel report`): one self-contained HTML page of every stage's record.

`gather` reads what the stages already keep (the lake's views and side tables, the dataset registry, the jobs
table) into typed records, one per section; `flywheel status` reads its last runs through the same functions.
`page` renders them with inline SVG charts (`charts`): no script and no network fetch when the page is opened.
"""
