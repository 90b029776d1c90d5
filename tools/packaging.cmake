# packaging.cmake: the Debian package, `cpack -G DEB` in the build directory (README "Operating
# chainsync"). It holds what `cmake --install` installs under /usr; its Depends are computed by
# dpkg-shlibdeps from the program's libraries (liblmdb0, libuv1, libsodium23, ...), so it asks
# for Debian's own packages. The postinst creates the chainsync user and /var/lib/chainsync.
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME chainsync)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "keeps a chain of shops' catalogs in step over an event log")
set(CPACK_PACKAGE_CONTACT "chainsync maintainers <chainsync@localhost>")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA ${CMAKE_CURRENT_LIST_DIR}/debian/postinst)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
include(CPack)
