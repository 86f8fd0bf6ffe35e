"""A stand-in for crAPI's object endpoints: returns objects with their owner, like crAPI does,
so that IDOR through opaque ids can be caught on the response. Anything else is echoed."""
from __future__ import annotations

import json
import re

from echo_upstream import BackgroundServer, _Echo

VEHICLES = {"4bae9968-ec7f-4de3-a3a0-ba1b2ab5e5e5": "alice@example.com", "0a9a5e2c-5b2b-4ae4-8e0e-1f0c7d1e7e11": "victim@example.com"}
ORDERS = {"1": "alice@example.com", "2": "victim@example.com"}


class _Crapi(_Echo):
    def _answer(self) -> None:
        path = self.path.split("?")[0]
        m = re.fullmatch(r"/identity/api/v2/vehicle/([^/]+)/location", path)
        if m and m.group(1) in VEHICLES:
            return self._json({"carId": m.group(1), "vehicleLocation": {"latitude": "37.7", "longitude": "-122.4"}, "fullName": "Owner", "email": VEHICLES[m.group(1)]})
        m = re.fullmatch(r"/workshop/api/shop/orders/([^/]+)", path)
        if m and m.group(1) in ORDERS and self.command == "GET":
            return self._json({"order": {"id": int(m.group(1)), "user": {"email": ORDERS[m.group(1)], "number": "555"}, "quantity": 1, "status": "delivered"}})
        if path == "/identity/api/v2/user/dashboard":
            return self._dashboard()
        if path == "/list":
            if "none" in self.path:
                return self._json([])
            return self._json([{"owner": "alice"}, {"owner": "alice"}] + ([{"owner": "mallory"}] if "leak" in self.path else []))
        return super()._answer()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def _dashboard(self) -> None:
        """crAPI's dashboard answer; `x-fake-variant` picks a misbehaving upstream."""
        variant = self.headers.get("x-fake-variant", "")
        user = {"id": 35, "name": "Jasen.Hamill", "email": "Jasen.Hamill@example.com", "number": "7005397357",
                "picture_url": None, "video_url": None, "video_name": None, "available_credit": 155, "video_id": 0}
        if variant == "role":
            user["role"] = "ROLE_ADMIN"
        if variant == "broken":
            user["available_credit"] = "lots"
        if variant == "created":
            return self._json(user, status=201)
        if variant == "error":
            return self._json({"message": "boom"}, status=500)
        return self._json(user, chunked=variant == "chunked")

    def _json(self, obj, status: int = 200, chunked: bool = False) -> None:
        self._read_body()
        payload = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        if chunked:
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for i in range(0, len(payload), 7):
                piece = payload[i:i + 7]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def crapi_server() -> BackgroundServer:
    return BackgroundServer(_Crapi, 0)
