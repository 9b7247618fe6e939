"""Where the API lives: the bulk-upsert routes hang under the vendor's own path, so existing callers of
the synchronous API change only the host. Shared by the routes, the OpenAPI document and the command line,
which talks to the API over HTTP only and so imports nothing of ``api/``: this module is the one they share."""

JOBS_PREFIX = "/v2/integrations/customer/upsert"
