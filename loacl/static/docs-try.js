// Starts Swagger UI on /docs/try (loacl/http/apidocs.py serves this file; the page's policy
// allows no inline script). Everything it loads comes from this server: the API document from
// the URL in data-spec, the bundle and its stylesheet from /docs/assets/.
(function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  window.ui = window.SwaggerUIBundle({
    url: root.getAttribute("data-spec"),
    domNode: root,
    // No online validator (it would send the document to another site, and its badge is an
    // image from there), no ?url=/?configUrl= from the address bar (a link could make the page
    // load and call another API), no remote config.
    validatorUrl: null,
    queryConfigEnabled: false,
    deepLinking: true,
    // The reader tries requests without a further "Try it out" click per operation.
    tryItOutEnabled: true,
    displayRequestDuration: true,
    filter: true,
    // The token entered under Authorize lives in this tab only (not in localStorage).
    persistAuthorization: false,
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
})();
