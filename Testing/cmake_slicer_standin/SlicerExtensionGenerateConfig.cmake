# Stand-in: Slicer writes the extension's description file from the EXTENSION_* variables; all must be set.
foreach(var EXTENSION_HOMEPAGE EXTENSION_CONTRIBUTORS EXTENSION_DESCRIPTION EXTENSION_ICONURL EXTENSION_SCREENSHOTURLS EXTENSION_DEPENDS)
  if("${${var}}" STREQUAL "")
    message(FATAL_ERROR "standin: ${var} is not set")
  endif()
  standin_record(${var} "${${var}}")
endforeach()
standin_record(EXTENSION_NAME "${PROJECT_NAME}")
set(STANDIN_CONFIG_GENERATED TRUE)
