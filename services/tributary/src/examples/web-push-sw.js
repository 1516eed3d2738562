// The Web Push example's service worker: shows each push Tributary sends (its JSON is
// {"title", "body", "data"} and whatever the push's "web" section adds; docs/push.md).
"use strict";

self.addEventListener("push", (event) => {
  let message = {};
  try {
    message = event.data ? event.data.json() : {};
  } catch (_) {
    message = { body: event.data ? event.data.text() : "" };
  }
  const title = message.title || "Tributary";
  const options = {
    body: message.body || "",
    data: message.data || {},
    // A push's collapse id, when the push's "web" section names one as a tag, replaces the
    // notification with the same tag.
    tag: message.tag || undefined,
  };
  event.waitUntil(self.registration.showNotification(title, options));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  event.waitUntil(
    self.clients.matchAll({ type: "window", includeUncontrolled: true }).then((windows) => {
      const open = windows.find((client) => client.url.includes("/examples/web-push.html"));
      return open ? open.focus() : self.clients.openWindow("/examples/web-push.html");
    }),
  );
});
