-- Argo CD health of a kubetune.io FineTuneJob (argocd-cm: resource.customizations.health.kubetune.io_FineTuneJob).
-- Healthy: Succeeded=True. Degraded: Failed=True (the condition's message), except a user's cancel
-- (reason Cancelled), which is Suspended like a user's pause: stopped on purpose, not broken.
-- Suspended: Suspended=True.
-- Progressing otherwise, and always while the operator has not observed the latest generation: the pre-flight
-- running (Running=False reason Validating) or passed (the training Job being created), queued, training. A failed
-- pre-flight is Failed=True (ValidationFailed: bad records or too big for its GPUs; PreflightFailed), so Degraded.
local hs = {status = "Progressing", message = "Waiting for the kubetune operator"}

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c)
  if c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return c.reason or c.type
end

if obj.status == nil then
  return hs
end
local status = obj.status
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.message = "Waiting for the operator to act on generation " .. generation
  return hs
end

local failed = condition(status, "Failed")
if failed ~= nil and failed.status == "True" then
  hs.status = "Degraded"
  if failed.reason == "Cancelled" then
    hs.status = "Suspended"
  end
  hs.message = describe(failed)
  return hs
end
local succeeded = condition(status, "Succeeded")
if succeeded ~= nil and succeeded.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(succeeded)
  return hs
end
local suspended = condition(status, "Suspended")
if suspended ~= nil and suspended.status == "True" then
  hs.status = "Suspended"
  hs.message = describe(suspended)
  return hs
end

local running = condition(status, "Running")
if running ~= nil then
  hs.message = describe(running)
  if running.status ~= "True" and running.reason ~= nil then
    hs.message = running.reason .. ": " .. hs.message
  end
end
if status.progress ~= nil and status.progress.percent ~= nil and status.progress.step ~= nil and status.progress.step > 0 then
  hs.message = hs.message .. " (" .. status.progress.percent .. "%, step " .. status.progress.step .. ")"
end
return hs
