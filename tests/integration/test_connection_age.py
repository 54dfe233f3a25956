"""CHAT_MAX_CONNECTION_AGE_SECONDS: the server closes old connections, so clients reconnect (and rebalance)."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2

from tests.integration.harness import running_replica, settings_for


async def _check(channel: grpc.aio.Channel) -> int:
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    response = await check(health_pb2.HealthCheckRequest(), timeout=5)
    return int(response.status)


async def test_old_connections_are_closed_and_the_client_reconnects(database_url: str) -> None:
    settings = settings_for(database_url, max_connection_age_seconds=0.5, shutdown_grace_seconds=1.0)
    async with running_replica(settings) as replica:
        channel = grpc.aio.insecure_channel(replica.address)
        try:
            assert await _check(channel) == health_pb2.HealthCheckResponse.SERVING
            assert channel.get_state() is grpc.ChannelConnectivity.READY
            # The server's GOAWAY takes the channel out of READY; bounded well above the age (+10 % jitter).
            await asyncio.wait_for(channel.wait_for_state_change(grpc.ChannelConnectivity.READY), timeout=15)
            assert channel.get_state() is not grpc.ChannelConnectivity.READY
            assert await _check(channel) == health_pb2.HealthCheckResponse.SERVING  # a new connection
        finally:
            await channel.close()
