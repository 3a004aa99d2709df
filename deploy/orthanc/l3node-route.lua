-- Auto-route CT image series to l3node once Orthanc considers them stable
-- (no new instance for "StableAge" seconds). One association per series.
-- Only CT images (one instance per slice, or Enhanced / Legacy Converted Enhanced CT
-- multi-frame) are routed: the SEG, SR and
-- secondary capture that l3node sends back are never routed again.

local CT_SOP_CLASSES = {
  ["1.2.840.10008.5.1.4.1.1.2"] = true,    -- CT Image Storage
  ["1.2.840.10008.5.1.4.1.1.2.1"] = true,  -- Enhanced CT Image Storage
  ["1.2.840.10008.5.1.4.1.1.2.2"] = true,  -- Legacy Converted Enhanced CT Image Storage
}

function OnStableSeries(seriesId, tags, metadata)
  if tags["Modality"] ~= "CT" then
    return
  end
  local instances = ParseJson(RestApiGet("/series/" .. seriesId .. "/instances"))
  if #instances == 0 then
    return
  end
  local sopClass = RestApiGet("/instances/" .. instances[1]["ID"] .. "/metadata/SopClassUid")
  if not CT_SOP_CLASSES[sopClass] then
    return
  end
  print("l3node-route: sending CT series " .. seriesId .. " (" .. #instances .. " instances)")
  -- Orthanc 1.10's Lua SendToModality() expects an instance; the REST route sends
  -- the whole series over one association.
  RestApiPost("/modalities/l3node/store", seriesId)
end
