"""Joining a running Ray cluster as a driver: the one place that knows how (token auth, loopback nodes)."""

from __future__ import annotations


def connect_ray(address: str, namespace: str, runtime_env: dict | None = None, log_to_driver: bool = False) -> None:
    """Join an existing Ray cluster as a driver.

    Ray 2.60 starts local clusters with token authentication and only turns it on by itself for
    drivers that find a local cluster automatically; a driver given an explicit address (the
    service's, from its pid file) must opt in. When RAY_AUTH_MODE is unset this does what Ray does
    for an auto-detected cluster: use token mode if Ray's own token store has a token.
    """
    import ray

    try:
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    except ImportError:  # a Ray without token authentication
        maybe_enable_token_auth_if_token_available = None
    if maybe_enable_token_auth_if_token_available is not None:
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    # Nodes started on 127.0.0.1 register under that address; a driver must then say it is on that node.
    loopback = address.rsplit(":", 1)[0] in ("127.0.0.1", "localhost")
    ray.init(address=address, namespace=namespace, log_to_driver=log_to_driver, runtime_env=runtime_env,
             **({"_node_ip_address": "127.0.0.1"} if loopback else {}))
    forget_serve_client()


def forget_serve_client() -> None:
    """Drop Serve's cached controller client. Ray keeps it across `ray.shutdown()`, so a process that joined
    another cluster before (a restarted service, a second service) would call a controller of that one and
    fail with "from a different cluster" (ray-project/ray#62368, #64647); the next Serve call finds the
    controller of the cluster joined now."""
    try:
        from ray.serve.context import _set_global_client
    except ImportError:  # a Ray whose Serve no longer caches the client this way
        return
    _set_global_client(None)
