"""The gateway as a real process: a real OAuth client library, the CLI, services' revocation feed, shared Redis limits."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from joserfc.jwk import ECKey, KeySet

from services.runtime.revocations import RevocationList, gateway_fetch
from services.runtime.settings import Settings
from services.runtime.tokens import TokenProvider
from tests.gateway.support import GatewayProcess, Upstream, cli, free_port, process_env

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:The httpx module is deprecated"),
]

INTERNAL_ID = "partnerhub-internal"
INTERNAL_SECRET = "internal-" + uuid.uuid4().hex


@pytest.fixture
async def process(tmp_path: Path, upstream: Upstream) -> AsyncIterator[GatewayProcess]:
    port = free_port()
    env = process_env(
        tmp_path, upstream.url, port,
        PARTNERHUB_INTERNAL_CLIENT_ID=INTERNAL_ID, PARTNERHUB_INTERNAL_CLIENT_SECRET=INTERNAL_SECRET,
        PARTNERHUB_REVOCATION_POLL_INTERVAL="0.2",
    )
    gateway = GatewayProcess(port, env, tmp_path / "gateway.log")
    try:
        await gateway.start()
        yield gateway
    finally:
        await gateway.stop()


async def test_cli_json_contract_before_the_gateway_runs(tmp_path: Path) -> None:
    env = process_env(tmp_path, "http://127.0.0.1:9", free_port())
    doc = await asyncio.to_thread(cli, env, "client", "create", "--ops", "first-ops")
    assert set(doc) == {"client_id", "client_secret", "scopes"}
    assert "admin" in doc["scopes"]
    partner = await asyncio.to_thread(cli, env, "client", "create", "--partner-id", "ptn-9", "--scopes", "partners:read kpis:read")
    assert partner["scopes"] == ["partners:read", "kpis:read"]


async def test_real_oauth_client_with_each_auth_method(process: GatewayProcess, upstream: Upstream, tmp_path: Path) -> None:
    from authlib.integrations.httpx_client import AsyncOAuth2Client

    token_url = process.url + "/oauth/token"
    basic = await asyncio.to_thread(cli, process.env, "client", "create", "--partner-id", "ptn-lib", "--scopes", "partners:read,kpis:read")
    key = ECKey.generate_key("P-256", parameters={"kid": "lib-key"}, private=True)
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(KeySet([key]).as_dict(private=False)))
    keyed = await asyncio.to_thread(
        cli, process.env, "client", "create", "--partner-id", "ptn-key", "--scopes", "kpis:read", "--jwks", str(jwks_file)
    )
    clients = {
        "client_secret_basic": AsyncOAuth2Client(basic["client_id"], basic["client_secret"], token_endpoint_auth_method="client_secret_basic"),
        "client_secret_post": AsyncOAuth2Client(basic["client_id"], basic["client_secret"], token_endpoint_auth_method="client_secret_post"),
        "private_key_jwt": AsyncOAuth2Client(keyed["client_id"], key, token_endpoint_auth_method="private_key_jwt"),
    }
    clients["private_key_jwt"].register_client_auth_method(PrivateKeyJWT(token_url, alg="ES256"))
    for method, client in clients.items():
        async with client:
            token = await client.fetch_token(token_url, grant_type="client_credentials", scope="kpis:read")
            assert token["token_type"] == "Bearer" and token["scope"] == "kpis:read", method
            response = await client.get(process.url + "/v1/kpis")
            assert response.status_code == 200, (method, response.text)
            assert upstream.seen[-1].headers["x-client-id"] == client.client_id
            assert upstream.seen[-1].headers["x-partner-id"] in ("ptn-lib", "ptn-key")


async def test_services_learn_revocations_from_the_gateway(process: GatewayProcess, upstream: Upstream) -> None:
    settings = Settings(
        gateway_url=process.url, internal_client_id=INTERNAL_ID, internal_client_secret=INTERNAL_SECRET
    )
    service_side = RevocationList(gateway_fetch(process.url, TokenProvider(settings)), interval=60)
    await service_side.sync()
    creds = await asyncio.to_thread(cli, process.env, "client", "create", "--partner-id", "ptn-rv", "--scopes", "kpis:read")
    async with httpx.AsyncClient(base_url=process.url) as http:
        issued = await http.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=(creds["client_id"], creds["client_secret"]))
        token = issued.json()["access_token"]
        introspected = await http.post("/oauth/introspect", data={"token": token}, auth=(creds["client_id"], creds["client_secret"]))
        jti = introspected.json()["jti"]
        assert not service_side.is_revoked(jti, creds["client_id"])
        assert (await http.post("/oauth/revoke", data={"token": token}, auth=(creds["client_id"], creds["client_secret"]))).status_code == 200
        assert (await http.get("/v1/kpis", headers={"Authorization": f"Bearer {token}"})).status_code == 401
    assert await service_side.sync() == 1
    assert service_side.is_revoked(jti, creds["client_id"])


async def test_two_gateways_on_one_redis_admit_no_more_than_the_limit(tmp_path: Path, upstream: Upstream, redis_url: str) -> None:
    burst = 5
    limits = json.dumps({"default": {"per_second": 0.05, "burst": burst}})
    extra = {"PARTNERHUB_REDIS_URL": redis_url, "PARTNERHUB_REDIS_KEY_PREFIX": f"test:{uuid.uuid4().hex}:", "PARTNERHUB_RATE_LIMITS": limits}
    ports = [free_port(), free_port()]
    # Replicas of one deployment share the issuer (their public URL) and the database.
    extra["PARTNERHUB_ISSUER"] = f"http://127.0.0.1:{ports[0]}"
    gateways = [
        GatewayProcess(port, process_env(tmp_path, upstream.url, port, **extra), tmp_path / f"gateway-{port}.log")
        for port in ports
    ]
    try:
        # One after the other: both migrate the same database (two replicas of one deployment).
        for gateway in gateways:
            await gateway.start()
        creds = await asyncio.to_thread(cli, gateways[0].env, "client", "create", "--partner-id", "ptn-shared", "--scopes", "kpis:read")
        async with httpx.AsyncClient(timeout=10) as http:
            issued = await http.post(
                gateways[0].url + "/oauth/token", data={"grant_type": "client_credentials"}, auth=(creds["client_id"], creds["client_secret"])
            )
            headers = {"Authorization": f"Bearer {issued.json()['access_token']}"}
            responses = await asyncio.gather(*(http.get(gateways[i % 2].url + "/v1/kpis", headers=headers) for i in range(24)))
        statuses = [r.status_code for r in responses]
        assert statuses.count(200) == burst, statuses
        assert statuses.count(429) == 24 - burst
        assert {r.headers["ratelimit-policy"] for r in responses} == {f'"default";q={burst};w=100'}
    finally:
        for gateway in gateways:
            await gateway.stop()
