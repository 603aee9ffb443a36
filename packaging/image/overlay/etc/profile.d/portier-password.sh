# The image's root has no password (console login only; SSH takes keys only). At the first
# console login, ask for one.
if [ "$(id -u)" -eq 0 ] && [ -t 0 ] && [ "$(passwd -S root 2>/dev/null | cut -d' ' -f2)" = NP ]; then
  echo "portier: root has no password yet; set one now (console logins need it from now on)."
  passwd root || echo "portier: no password set; you will be asked again at the next login."
fi
