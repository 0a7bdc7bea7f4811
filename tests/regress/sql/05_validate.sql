-- validate: the checks of a batch, item by item, without doing anything.
\set SHOW_CONTEXT never
SELECT slug FROM tenancy.provision('existing');
SELECT * FROM tenancy.validate('[
  {"slug": "fresh", "name": "Fresh Co"},
  {"slug": "existing"},
  {"slug": "fresh"},
  {"slug": "Bad-Slug", "colour": "red"},
  {"name": "no slug"},
  "not an object",
  {"slug": "trader", "template": "trading", "max_users": 10},
  {"slug": "nope", "template": "no_such_template"},
  {"slug": "tsdb", "template": "timeseries"},
  {"slug": "opts", "domain": "x", "settings": []}
]');
SELECT * FROM tenancy.validate('{"slug": "not-an-array"}');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS nothing_created FROM tenancy.tenants WHERE slug IN ('fresh', 'trader');
