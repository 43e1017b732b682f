#!/usr/bin/env python3
"""A test collector for OTLP logs: gRPC (grpcio) and HTTP/protobuf on loopback ports
chosen by the kernel, both decoded by the official opentelemetry-proto classes.

Prints "GRPC_PORT HTTP_PORT" on its first stdout line, then appends one JSON line per
request received to OUT: {"transport": "grpc"|"http", "request": <MessageToDict>,
"authorization": <the request's authorization header or metadata, or null>}.
"""
import json
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as pb
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as pb_grpc

OUT = open(sys.argv[1], "a", buffering=1)
LOCK = threading.Lock()


def keep(transport, request, authorization):
    line = json.dumps(
        {"transport": transport, "request": MessageToDict(request), "authorization": authorization}
    )
    with LOCK:
        OUT.write(line + "\n")


class Logs(pb_grpc.LogsServiceServicer):
    def Export(self, request, context):
        keep("grpc", request, dict(context.invocation_metadata()).get("authorization"))
        return pb.ExportLogsServiceResponse()


class Http(BaseHTTPRequestHandler):
    def do_POST(self):
        if self.path != "/v1/logs" or self.headers.get("Content-Type") != "application/x-protobuf":
            self.send_error(404)
            return
        request = pb.ExportLogsServiceRequest()
        request.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
        keep("http", request, self.headers.get("Authorization"))
        body = pb.ExportLogsServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
pb_grpc.add_LogsServiceServicer_to_server(Logs(), server)
grpc_port = server.add_insecure_port("127.0.0.1:0")
server.start()
httpd = ThreadingHTTPServer(("127.0.0.1", 0), Http)
threading.Thread(target=httpd.serve_forever, daemon=True).start()
print(f"{grpc_port} {httpd.server_address[1]}", flush=True)
server.wait_for_termination()
