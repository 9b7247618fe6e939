// Swagger UI over our own /openapi.json; every file comes from this server (see api/pages.py).
"use strict";
window.ui = SwaggerUIBundle({
  url: new URL("openapi.json", document.baseURI).href,
  dom_id: "#swagger-ui",
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  deepLinking: true,
  tryItOutEnabled: true,        // "Execute" is there at once
  persistAuthorization: false,  // the token is forgotten with the page
  displayRequestDuration: true,
  validatorUrl: null,           // no call to the public validator
  defaultModelsExpandDepth: 0,
});
