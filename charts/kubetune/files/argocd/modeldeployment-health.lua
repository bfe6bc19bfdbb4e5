-- Argo CD health of a kubetune.io ModelDeployment (argocd-cm: resource.customizations.health.kubetune.io_ModelDeployment).
-- Healthy: Ready=True and AdaptersReady=True, with no adapter still loading.
-- Degraded: an adapter Failed or was Rejected, or Ready=False for a terminal reason.
-- Suspended: scaled to zero replicas.
-- Progressing with the reason while an adapter is Gated (a version failed its gate; the previous one keeps
-- serving) or a canary version shares its traffic (docs/promotion.md): a promotion is not finished.
-- Progressing otherwise, and always while the operator has not observed the latest generation:
-- never Healthy while an adapter is half-published (Loading) or the status is stale.
local hs = {status = "Progressing", message = "Waiting for the kubetune operator"}

-- Ready=False reasons that waiting will not fix (kubetune.api.conditions.Reason).
local terminal = {
  ValidationFailed = true,
  UserError = true,
  OOMKilled = true,
  DeadlineExceeded = true,
  BackoffLimitExceeded = true,
  InternalError = true,
}

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

local loading = nil
local canary = nil
if status.adapters ~= nil then
  for _, a in ipairs(status.adapters) do
    if canary == nil and a.promotion ~= nil and a.promotion.canary ~= nil then
      canary = a
    end
    if a.state == "Failed" or a.state == "Rejected" then
      hs.status = "Degraded"
      hs.message = "Adapter " .. a.name .. " " .. a.state
      if a.message ~= nil and a.message ~= "" then
        hs.message = hs.message .. ": " .. a.message
      end
      return hs
    end
    if a.state ~= "Ready" and loading == nil then
      loading = a
    end
  end
end

local ready = condition(status, "Ready")
if ready ~= nil and ready.status == "False" and ready.reason ~= nil and terminal[ready.reason] then
  hs.status = "Degraded"
  hs.message = describe(ready)
  return hs
end

local available = condition(status, "Available")
if available ~= nil and available.reason == "ScaledToZero" then
  hs.status = "Suspended"
  hs.message = describe(available)
  return hs
end

local adaptersReady = condition(status, "AdaptersReady")
if loading ~= nil then
  hs.message = "Adapter " .. loading.name .. " is " .. loading.state
  if loading.message ~= nil and loading.message ~= "" then
    hs.message = hs.message .. ": " .. loading.message
  end
  return hs
end
if canary ~= nil then
  local c = canary.promotion.canary
  hs.message = "Adapter " .. canary.name .. " canarying version " .. c.version .. " at " .. c.weight .. "%"
  if canary.promotion.serving ~= nil and canary.promotion.serving ~= "" then
    hs.message = hs.message .. " beside version " .. canary.promotion.serving
  end
  if not c.ready then
    hs.message = hs.message .. " (loading: " .. (c.replicasLoaded or "0") .. " replicas)"
  end
  return hs
end
if ready ~= nil and ready.status == "True" and adaptersReady ~= nil and adaptersReady.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  if status.adaptersReady ~= nil then
    hs.message = hs.message .. " (adapters " .. status.adaptersReady .. ")"
  end
  return hs
end

local progressing = condition(status, "Progressing")
if ready ~= nil and ready.status ~= "True" then
  hs.message = describe(ready)
elseif adaptersReady ~= nil and adaptersReady.status ~= "True" then
  hs.message = describe(adaptersReady)
elseif progressing ~= nil then
  hs.message = describe(progressing)
end
return hs
