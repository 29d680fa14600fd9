-- Answers worked out once per worker from a string that comes again and
-- again (a Host, a session id, a header value, a host's token), kept up
-- to a bound and then forgotten all at once, so endless new strings cost
-- memory that stays bounded.
local setmetatable = setmetatable

local _M = {}
local Memo = {}
Memo.__index = Memo

-- A memo of at most `max` answers.
function _M.new(max)
    return setmetatable({ answers = {}, count = 0, max = max }, Memo)
end

-- The answer kept for `key`, or nil.
function Memo:get(key)
    return self.answers[key]
end

-- Keeps `answer` (not nil) for `key`, and returns it.
function Memo:set(key, answer)
    if self.answers[key] == nil then
        if self.count >= self.max then
            self:clear()
        end
        self.count = self.count + 1
    end
    self.answers[key] = answer
    return answer
end

-- Forgets the answer for `key`, and returns it (nil when there was none).
function Memo:forget(key)
    local answer = self.answers[key]
    if answer ~= nil then
        self.answers[key] = nil
        self.count = self.count - 1
    end
    return answer
end

-- Forgets every answer.
function Memo:clear()
    self.answers, self.count = {}, 0
end

return _M
