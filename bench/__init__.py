"""The benchmark behind `make bench`: the service against a bare Starlette ceiling, under wrk."""
