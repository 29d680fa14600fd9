-- Frames between a worker and its host (see rust/host/src/frame.rs): one
-- byte of kind, the payload length as a big-endian 32-bit integer, then the
-- payload.
local bit = require("bit")

local band = bit.band
local byte = string.byte
local char = string.char
local rshift = bit.rshift
local sub = string.sub

local _M = {
    SPAWN = "S", READY = "R", FAILED = "F", UNAVAILABLE = "U", MESSAGE = "M", KEEPALIVE = "K",
    EXIT = "X",
    DELIVER = "D", ACK = "A", QUERY = "Q", STATS = "T", END = "E",
    WATCH = "W", EVENT = "V", REQUEST = "P", HEAD = "H", NOTIFY = "N",
}

local HEADER_LEN = 5

local function header(kind, len)
    return char(byte(kind), band(rshift(len, 24), 0xff), band(rshift(len, 16), 0xff),
                band(rshift(len, 8), 0xff), band(len, 0xff))
end

local function payload_len(hdr)
    local b1, b2, b3, b4 = byte(hdr, 2, 5)
    return ((b1 * 256 + b2) * 256 + b3) * 256 + b4
end

-- Frames up to this long are sent as one string: concatenating a few small
-- pieces costs less than the socket's walk over a table of them. Longer
-- ones go as the table: a joined string is interned, and a LuaJIT built
-- without CRC32 string hashing (Debian's) hashes a long string by a few
-- of its bytes only, so frames that share their route's spawn request
-- (every stateless request) hash alike, and each new one would be compared
-- byte by byte with every earlier one not yet collected.
local JOIN_MAX = 512

-- The pieces of a long frame being sent. One table serves every send: a
-- cosocket copies the pieces before send() returns or yields.
local pieces = {}

-- Sends one frame; `a` to `f` are payload pieces (nil for none).
function _M.send(sock, kind, a, b, c, d, e, f)
    a, b, c, d, e, f = a or "", b or "", c or "", d or "", e or "", f or ""
    local len = #a + #b + #c + #d + #e + #f
    if len <= JOIN_MAX then
        return sock:send(header(kind, len) .. a .. b .. c .. d .. e .. f)
    end
    pieces[1] = header(kind, len)
    pieces[2], pieces[3], pieces[4], pieces[5], pieces[6], pieces[7] = a, b, c, d, e, f
    local ok, err = sock:send(pieces)
    -- Holds no message until the next send.
    pieces[2], pieces[3], pieces[4], pieces[5], pieces[6], pieces[7] = "", "", "", "", "", ""
    return ok, err
end

-- The binding of a request (see rust/host/src/binding.rs): which route and
-- consumer a session belongs to, as Spawn and Deliver payloads start.
function _M.binding(route_key, consumer)
    local text = route_key .. "\n" .. (consumer or "")
    local len = #text
    return char(band(rshift(len, 8), 0xff), band(len, 0xff)) .. text
end

-- Reads one frame. Returns kind, payload or nil, err (the socket's error:
-- "timeout", "closed", ...). After an error the connection is unusable.
function _M.receive(sock)
    local hdr, err = sock:receive(HEADER_LEN)
    if not hdr then
        return nil, err
    end
    local len = payload_len(hdr)
    if len == 0 then
        return sub(hdr, 1, 1), ""
    end
    local payload
    payload, err = sock:receive(len)
    if not payload then
        return nil, err
    end
    return sub(hdr, 1, 1), payload
end

return _M
