# Stand-in: packaging comes last, after the extension's config was generated.
if(NOT STANDIN_CONFIG_GENERATED)
  message(FATAL_ERROR "standin: include Slicer_EXTENSION_GENERATE_CONFIG before Slicer_EXTENSION_CPACK")
endif()
standin_record(cpack "${PROJECT_NAME}")
