# Test-only stand-in for a Slicer build tree, found by `find_package(Slicer)` through -DSlicer_DIR.
# It cannot build anything: its macros check the arguments the extension passes them, fail on missing files, and
# record what they saw in ${CMAKE_BINARY_DIR}/standin_manifest.tsv for Testing/test_extension_cmake.py.

if(NOT DEFINED EXTENSION_HOMEPAGE)
  message(FATAL_ERROR "standin: set the EXTENSION_* metadata before find_package(Slicer), as in Slicer's extension template")
endif()

set(Slicer_FOUND TRUE)
set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake)
set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionGenerateConfig.cmake)
set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionCPack.cmake)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "lib/Slicer-standin/qt-scripted-modules")
set(STANDIN_MANIFEST ${CMAKE_BINARY_DIR}/standin_manifest.tsv)
file(WRITE ${STANDIN_MANIFEST} "")

function(standin_record kind value)
  file(APPEND ${STANDIN_MANIFEST} "${kind}\t${value}\n")
endfunction()
