// What the person may do, as the server said after login (`GET /api/v1/auth/me` → `rights`),
// so the dashboard shows only the buttons a person can use without keeping its own copy of
// the server's rules. The server still checks every call.

/** The permission each dashboard action needs (server/src/auth.rs names them). */
const ACTION_PERMISSION = {
  dispatch: 'commands.dispatch',
  manageDevices: 'devices.manage',
  manageGroups: 'devices.manage',
  deadLetters: 'devices.manage',
  uploadFirmware: 'firmware.manage',
  deployFirmware: 'firmware.manage',
  manageUsers: 'users.manage',
};

const rightsOf = (user) => (user && user.rights) || { permissions: [], commands: [], templates: [], otherTemplates: false };

export function can(user, action) {
  return rightsOf(user).permissions.includes(ACTION_PERMISSION[action]);
}

export function canSend(user, type) {
  return rightsOf(user).commands.includes(type);
}

/** A template the server does not name (a device's own) needs `otherTemplates`. */
export function canRunTemplate(user, template) {
  const rights = rightsOf(user);
  return rights.templates.includes(template) || (rights.otherTemplates && canSend(user, 'exec_shell'));
}
