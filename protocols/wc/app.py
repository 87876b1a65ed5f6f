"""ww cell /ww/wc/0.1.0, written in Python: counts the lines, words and bytes of the
request, like `wc`, and answers with them as one line of JSON.

    $ printf 'hello world\nbye\n' | ww dial /ip4/…/p2p/… /ww/wc/0.1.0
    {"lines": 2, "words": 3, "bytes": 16}

Only Python's standard library, and the bindings componentize-py generates from
ww's wit/ directory (see build.sh).
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import wetware_streams_streams as streams
from wit_world.imports.wasi_io_streams import StreamError_Closed

CHUNK = 64 * 1024
# blocking-write-and-flush takes at most 4096 bytes per call.
MAX_WRITE = 4096


class Run(exports.Run):
    def run(self) -> None:
        connection = streams.create_connection()
        request = connection.get_input_stream()
        lines = words = size = 0
        in_word = False
        while True:
            try:
                chunk = request.blocking_read(CHUNK)
            except Err as error:
                if isinstance(error.value, StreamError_Closed):
                    break  # the peer closed its side: that was the whole request
                raise
            size += len(chunk)
            lines += chunk.count(b"\n")
            for byte in chunk:
                space = byte in b" \t\n\r\v\f"
                if not space and not in_word:
                    words += 1
                in_word = not space
        answer = json.dumps({"lines": lines, "words": words, "bytes": size}) + "\n"
        reply = connection.get_output_stream()
        data = answer.encode()
        for start in range(0, len(data), MAX_WRITE):
            reply.blocking_write_and_flush(data[start : start + MAX_WRITE])
