-- A push to a channel reaches the devices of the client ids subscribed to it: they are read
-- by client id in id order, from the index alone (the push reads every id once, then the
-- devices a page at a time).
DROP INDEX push_devices_by_client;
CREATE INDEX push_devices_of_clients ON push_devices (app_id, client_id, id);
