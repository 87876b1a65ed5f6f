// ww cell /ww/echo-js/0.1.0, written in JavaScript: answers every stream with the
// bytes the peer sent, like the Rust `echo` cell.
//
//     $ printf 'hello\n' | ww dial /ip4/…/p2p/… /ww/echo-js/0.1.0
//     hello
//
// componentize-js builds it against ww's wit/ directory (see build.sh). `splice` moves
// the bytes inside the host, without copying them through the cell's memory: the
// bindings componentize-js generates never free the bytes passed to `write` or
// `blockingWriteAndFlush`, so a cell that writes everything it sends would run out of
// memory on a long stream.
import { createConnection } from 'wetware:streams/streams@0.1.0';

const CHUNK = 64n * 1024n;

// The world's `wasi:cli/run` export: return for `ok`, throw for `err` (the stream is
// then aborted, not closed).
export const run = {
  run() {
    const connection = createConnection();
    const input = connection.getInputStream();
    const output = connection.getOutputStream();
    for (;;) {
      try {
        output.blockingSplice(input, CHUNK);
      } catch (error) {
        // `closed`: the peer closed its side, so that was the whole request.
        if (error.payload?.tag === 'closed') return;
        throw error;
      }
    }
  },
};
