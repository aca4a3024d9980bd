"""A local SMTP sink for the console's browser tests (aiosmtpd): every message it receives is
written to MAIL_DIR as <n>.eml. Usage: smtp_sink.py PORT MAIL_DIR"""
import sys, time, pathlib
from aiosmtpd.controller import Controller


class Save:
    def __init__(self, directory):
        self.dir = pathlib.Path(directory)
        self.n = 0

    async def handle_DATA(self, server, session, envelope):
        self.n += 1
        (self.dir / f"{self.n:03d}.eml").write_bytes(envelope.original_content or envelope.content)
        return "250 OK"


port, directory = int(sys.argv[1]), sys.argv[2]
pathlib.Path(directory).mkdir(parents=True, exist_ok=True)
controller = Controller(Save(directory), hostname="127.0.0.1", port=port)
controller.start()
print("ready", flush=True)
try:
    while True:
        time.sleep(3600)
finally:
    controller.stop()
