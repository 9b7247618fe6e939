"""Where the API lives: the bulk-upsert routes hang under the vendor's own path, so existing callers of
the synchronous API change only the host. Shared by the routes, the OpenAPI document and the command line."""

JOBS_PREFIX = "/v2/integrations/customer/upsert"
