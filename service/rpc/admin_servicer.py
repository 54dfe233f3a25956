"""AdminService: API keys, for callers with the admin scope. Each method checks the scope, calls ApiKeys."""

from __future__ import annotations

from chat.v1 import admin_pb2 as pb
from chat.v1 import admin_pb2_grpc
from service.auth.api_keys import ApiKeys
from service.auth.principals import require_admin
from service.rpc import convert
from service.rpc.context import current_principal
from service.rpc.handlers import Context


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, api_keys: ApiKeys) -> None:
        self._keys = api_keys

    async def CreateApiKey(self, request: pb.CreateApiKeyRequest, context: Context) -> pb.CreateApiKeyResponse:
        require_admin(current_principal())
        key, token = await self._keys.create(request.user_id, scopes=request.scopes, name=request.display_name)
        return pb.CreateApiKeyResponse(api_key=convert.api_key(key), token=token)

    async def ListApiKeys(self, request: pb.ListApiKeysRequest, context: Context) -> pb.ListApiKeysResponse:
        require_admin(current_principal())
        page = await self._keys.list(user_id=request.user_id or None, size=request.page_size, token=request.page_token)
        return pb.ListApiKeysResponse(
            api_keys=[convert.api_key(k) for k in page.items], next_page_token=page.next_page_token
        )

    async def RevokeApiKey(self, request: pb.RevokeApiKeyRequest, context: Context) -> pb.RevokeApiKeyResponse:
        require_admin(current_principal())
        return pb.RevokeApiKeyResponse(api_key=convert.api_key(await self._keys.revoke(request.key_id)))
