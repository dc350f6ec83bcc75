# tests/deliver/dsn.cmake: RFC 3464 DSNs (deliver/dlv_dsn.c). Included by tests/deliver/CMakeLists.txt
# (include(${CMAKE_CURRENT_LIST_DIR}/dsn.cmake)); needs the ds_dlv_dsn target (deliver/dsn.cmake).
#   dsn_unit   the cmocka tests (test_dsn)
#   dsn_email  test_dsn --write DIR writes every sample DSN; check_dsn.py parses each with Python's
#              email package (multipart/report, report-type=delivery-status, the three parts, the
#              delivery-status fields, the returned original byte for byte)
if(NOT TARGET ds_dlv_dsn)
  include(${CMAKE_SOURCE_DIR}/deliver/dsn.cmake)
endif()
if(CMOCKA_FOUND)
  add_executable(test_dsn ${CMAKE_CURRENT_LIST_DIR}/test_dsn.c)
  target_link_libraries(test_dsn PRIVATE ds_dlv_dsn PkgConfig::CMOCKA)
  add_test(NAME dsn_unit COMMAND test_dsn)
  set_tests_properties(dsn_unit PROPERTIES TIMEOUT 60)
  find_package(Python3 COMPONENTS Interpreter)
  if(Python3_FOUND)
    add_test(NAME dsn_email
      COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/check_dsn.py $<TARGET_FILE:test_dsn>)
    set_tests_properties(dsn_email PROPERTIES TIMEOUT 60 ENVIRONMENT "PYTHONDONTWRITEBYTECODE=1")
  endif()
else()
  message(WARNING "cmocka not found: test_dsn not built")
endif()
