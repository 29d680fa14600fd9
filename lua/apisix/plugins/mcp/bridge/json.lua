-- Minimal JSON encoding for the few values mcp-bridge writes itself
-- (error bodies and the spawn request). Written by hand because Debian's
-- lua-cjson cannot tell an empty array from an empty object and escapes
-- every "/".
local byte = string.byte
local concat = table.concat
local format = string.format
local gsub = string.gsub
local ipairs = ipairs
local pairs = pairs
local sort = table.sort
local type = type

local _M = {}

local ESCAPES = {
    ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
    ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
}

local function escape_char(c)
    return ESCAPES[c] or format("\\u%04x", byte(c))
end

function _M.string(s)
    return '"' .. gsub(s, '[%c"\\]', escape_char) .. '"'
end

function _M.array_of_strings(list)
    local parts = {}
    for i, s in ipairs(list) do
        parts[i] = _M.string(s)
    end
    return "[" .. concat(parts, ",") .. "]"
end

-- Keys sorted, so the same table always encodes the same way.
function _M.object_of_strings(map)
    local keys = {}
    for k in pairs(map) do
        keys[#keys + 1] = k
    end
    sort(keys)
    local parts = {}
    for i, k in ipairs(keys) do
        parts[i] = _M.string(k) .. ":" .. _M.string(map[k])
    end
    return "{" .. concat(parts, ",") .. "}"
end

function _M.integer(n)
    if type(n) ~= "number" then
        return nil, "not a number"
    end
    return format("%d", n)
end

return _M
