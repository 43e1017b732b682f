"""A QUIC server and client (aioquic) for the end-to-end tests.

    quic_peer.py server ADDR PORT CERT KEY
        Answers QUIC handshakes with ALPN "h3" and echoes every stream; runs until killed.
        Prints "listening" once bound.
    quic_peer.py client ADDR PORT SNI TIMEOUT
        Opens a QUIC connection (certificate not checked), sends "ping" on a stream and
        reads the echo. Prints "connected" and exits 0 when the echo comes back, prints
        "failed: ..." and exits 1 when nothing completes within TIMEOUT seconds.
"""

import asyncio
import ssl
import sys

from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import StreamDataReceived

ALPN = ["h3"]


class Echo(QuicConnectionProtocol):
    def quic_event_received(self, event):
        if isinstance(event, StreamDataReceived):
            self._quic.send_stream_data(event.stream_id, event.data, end_stream=event.end_stream)
            self.transmit()


async def run_server(addr, port, cert, key):
    config = QuicConfiguration(is_client=False, alpn_protocols=ALPN)
    config.load_cert_chain(cert, key)
    await serve(addr, port, configuration=config, create_protocol=Echo)
    print("listening", flush=True)
    await asyncio.Event().wait()


async def run_client(addr, port, sni, timeout):
    config = QuicConfiguration(is_client=True, alpn_protocols=ALPN, server_name=sni)
    config.verify_mode = ssl.CERT_NONE

    async def exchange():
        async with connect(addr, port, configuration=config) as conn:
            reader, writer = await conn.create_stream()
            writer.write(b"ping")
            writer.write_eof()
            return await reader.read()

    try:
        data = await asyncio.wait_for(exchange(), timeout)
    except Exception as e:  # a timeout or a refused handshake
        print(f"failed: {type(e).__name__}", flush=True)
        return 1
    if data != b"ping":
        print(f"failed: echo {data!r}", flush=True)
        return 1
    print("connected", flush=True)
    return 0


def main():
    mode = sys.argv[1]
    if mode == "server":
        asyncio.run(run_server(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]))
    elif mode == "client":
        sys.exit(asyncio.run(run_client(sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5]))))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
