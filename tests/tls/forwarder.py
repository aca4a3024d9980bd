"""A TLS-terminating TCP forwarder: an HTTPS front for the plain-HTTP mock vendor in tests.

usage: forwarder.py CERT KEY TARGET_PORT   (prints "READY <port>", counts handshakes on stdout)
"""
import asyncio
import ssl
import sys

cert, key, target = sys.argv[1], sys.argv[2], int(sys.argv[3])
handshakes = 0


async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def handle(client_reader, client_writer):
    global handshakes
    handshakes += 1
    print(f"HANDSHAKES {handshakes}", flush=True)
    up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
    await asyncio.gather(pipe(client_reader, up_writer), pipe(up_reader, client_writer))


async def main():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
